"""A listening TLS bridge under attack: the credentials of every kind of bad peer (the zoo),
and a good session that keeps moving random bytes both ways while a test misbehaves.

The bridge runs with ``--second-client replace`` so that every newcomer gets as far as the TLS
handshake and our policy (with ``reject`` it would be refused before it, whatever it sends):
none of them may take the line over from the authenticated session.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography.x509.oid import ExtendedKeyUsageOID

from chardev_bridge.bridge.config import BridgeConfig
from chardev_bridge.local import LocalSpec
from chardev_bridge.qemu import pki
from tests.support.bridges import running_bridge
from tests.support.certs import NOW, craft, write_dir
from tests.support.net import HOST, client_context, tls_connect
from tests.support.streams import Flow, open_pty

HANDSHAKE_TIMEOUT = 0.5


# -- credentials: a CA, its server, a good client and every kind of bad one -------------------


@dataclass(frozen=True)
class Zoo:
    server: Path
    good: Path
    intruder: Path  # valid certificate, DN not on the allow-list
    revoked: Path
    revoked_serial: int
    expired: Path
    not_yet_valid: Path
    unknown_ca: Path
    self_signed: Path
    no_cert: Path
    wrong_name_server: Path  # a server certificate for another host name


def _leaf_dir(directory: Path, role: str, leaf: pki.Issued, ca: pki.Issued) -> Path:
    return write_dir(directory, role, leaf, [ca.cert])


def make_zoo(root: Path) -> Zoo:
    """A CA with its server dir (CRL and all) and a client dir of every kind under ``root``."""
    ca = pki.make_ca("O=Hostile Tests,CN=Test CA")
    other_ca = pki.make_ca("O=Hostile Tests,CN=Someone Else's CA")
    server = pki.issue_leaf(ca, "server", hostnames=["localhost"], ips=["127.0.0.1"])
    good = pki.issue_leaf(ca, "client", dn="O=Hostile Tests,CN=good-client")
    revoked = pki.issue_leaf(ca, "client", dn="O=Hostile Tests,CN=good-but-revoked")
    long_ago, later = NOW - dt.timedelta(days=30), NOW + dt.timedelta(days=30)
    crl = pki.make_crl(ca, [revoked.cert.serial_number])
    self_signed = craft(
        dn="O=Hostile Tests,CN=good-client", eku=[ExtendedKeyUsageOID.CLIENT_AUTH], san=()
    )
    server_dir = write_dir(root / "server", "server", server, [ca.cert], crl=crl)
    return Zoo(
        server=server_dir,
        good=_leaf_dir(root / "good", "client", good, ca),
        intruder=_leaf_dir(
            root / "intruder",
            "client",
            pki.issue_leaf(ca, "client", dn="O=Hostile Tests,CN=intruder"),
            ca,
        ),
        revoked=_leaf_dir(root / "revoked", "client", revoked, ca),
        revoked_serial=revoked.cert.serial_number,
        expired=_leaf_dir(
            root / "expired",
            "client",
            pki.issue_leaf(ca, "client", dn="O=Hostile Tests,CN=good-old", now=long_ago, days=1),
            ca,
        ),
        not_yet_valid=_leaf_dir(
            root / "future",
            "client",
            pki.issue_leaf(ca, "client", dn="O=Hostile Tests,CN=good-new", now=later),
            ca,
        ),
        unknown_ca=write_dir(
            root / "unknown-ca",
            "client",
            pki.issue_leaf(other_ca, "client", dn="O=Hostile Tests,CN=good-client"),
            [ca.cert],
        ),
        self_signed=write_dir(root / "self-signed", "client", self_signed, [ca.cert]),
        no_cert=write_dir(root / "no-cert", "client", None, [ca.cert]),
        wrong_name_server=write_dir(
            root / "wrong-name",
            "server",
            pki.issue_leaf(ca, "server", hostnames=["console.example.org"]),
            [ca.cert],
        ),
    )


def bridge_config(zoo: Zoo) -> BridgeConfig:
    return BridgeConfig(
        listen=True,
        host=HOST,
        port=0,
        local=LocalSpec("pty"),
        tls_creds=zoo.server,
        tls_authz=("O=Hostile Tests,CN=good-*",),
        handshake_timeout=HANDSHAKE_TIMEOUT,
        second_client="replace",
    )


# -- a session that keeps transferring while the test misbehaves ------------------------------


@dataclass
class Guarded:
    port: int
    pty_path: str
    name: str  # the good client, as the bridge logs it
    conn: trio.SSLStream[trio.SocketStream]
    app: trio.lowlevel.FdStream
    up: Flow  # good client -> pty application
    down: Flow  # pty application -> good client


@asynccontextmanager
async def guarded_session(zoo: Zoo) -> AsyncIterator[Guarded]:
    """A bridge with a good client moving random bytes both ways for the whole body; on the way
    out both flows must be complete and intact."""
    async with running_bridge(bridge_config(zoo)) as ready:
        assert ready.pty_path is not None
        conn, name = await tls_connect(ready.ports[0], client_context(zoo.good))
        async with open_pty(ready.pty_path) as app, trio.open_nursery() as nursery:
            guarded = Guarded(
                ready.ports[0], ready.pty_path, name, conn, app, Flow(conn, app), Flow(app, conn)
            )
            guarded.up.start(nursery)
            guarded.down.start(nursery)
            yield guarded
            await guarded.up.finish()
            await guarded.down.finish()
            nursery.cancel_scope.cancel()
        await conn.aclose()
    assert guarded.up.sent > 0 and guarded.up.intact, "client -> pty bytes damaged"
    assert guarded.down.sent > 0 and guarded.down.intact, "pty -> client bytes damaged"
