"""A peer that sends a record with a bad tag: the bridge answers with the bad_record_mac alert
and closes, no bare close, no close_notify after it. The record is made with the bridge's own
engine (OpenSSL underneath) by flipping a bit of its tag."""

from __future__ import annotations

import ssl

import pytest
import trio

from tests.support.bridges import capture_bridge_logs, listening_config, running_bridge, wait_log
from tests.support.certs import PKI
from tests.support.net import tlsstream_connect


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
async def test_tampered_record_is_answered_with_bad_record_mac_alert(
    pki: PKI, caplog: pytest.LogCaptureFixture, version: ssl.TLSVersion
) -> None:
    capture_bridge_logs(caplog)
    async with running_bridge(listening_config(pki.server_dir)) as ready:
        client = await tlsstream_connect(ready.ports[0], pki.client_dir, version)
        engine = client._engine
        engine.write_plaintext(b"tampered", split_last=False)
        wire = bytearray(engine.data_to_send())
        wire[-1] ^= 0x01
        await client.transport.send_all(wire)
        received = bytearray()
        with trio.fail_after(5):
            while chunk := await client.transport.receive_some():
                received += chunk
        # One alert record and then the TCP close: no bare close, no close_notify after it.
        assert received, "the bridge closed without an alert"
        alert_type = 0x15 if version == ssl.TLSVersion.TLSv1_2 else 0x17
        assert received[0] == alert_type
        assert len(received) == 5 + int.from_bytes(received[3:5], "big")
        engine.receive_ciphertext(received)
        with pytest.raises(ssl.SSLError, match="ALERT_BAD_RECORD_MAC"):
            engine.read_plaintext()
        await client.aclose()
        await wait_log(caplog, r"remote failed: .*bad record mac")
