"""gnutls priority strings mapped onto OpenSSL: versions, suites, curves, keywords and the
policy files they come from, and what the negotiated suite must be."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from chardev_bridge.qemu.policy import TLSPolicy, load_x509_creds, make_ssl_context
from chardev_bridge.qemu.priority import (
    APP_KEYWORD,
    DEFAULT_PRIORITY,
    PriorityError,
    apply_priority,
    check_negotiated,
    parse_priority,
    read_priority_keywords,
    resolve_priority,
)
from tests.support.certs import make_creds
from tests.support.net import priority_context

V12, V13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("NORMAL", V12, V13),
        ("NORMAL:-VERS-TLS1.2", V13, V13),
        ("NORMAL:-VERS-ALL:+VERS-TLS1.3", V13, V13),
        ("NORMAL:-VERS-TLS1.3", V12, V12),
        ("NORMAL:-VERS-TLS-ALL:+VERS-TLS1.2", V12, V12),
        ("NORMAL:-VERS-TLS1.0:-VERS-TLS1.1:-VERS-DTLS1.0", V12, V13),
        ("NONE:+VERS-TLS1.3:+AES-256-GCM:+GROUP-ALL", V13, V13),
    ],
)
def test_version_edits_map_to_minimum_and_maximum(
    text: str, low: ssl.TLSVersion, high: ssl.TLSVersion
) -> None:
    prio = parse_priority(text, keywords={})
    assert (prio.minimum_version, prio.maximum_version) == (low, high)
    ctx = priority_context(text)
    assert (ctx.minimum_version, ctx.maximum_version) == (low, high)


def test_default_is_tls12_minimum_with_openssl_ciphers() -> None:
    assert DEFAULT_PRIORITY.minimum_version == V12 and DEFAULT_PRIORITY.tls12_ciphers is None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    apply_priority(ctx, DEFAULT_PRIORITY)
    assert ctx.minimum_version == V12


def test_secure192_and_256_need_192_bit_keys_and_p384() -> None:
    for text in ("SECURE192", "SECURE256"):
        prio = parse_priority(text, keywords={})
        assert prio.ecdh_curve == "secp384r1" and prio.security_level == 4
        # OpenSSL's level 4 refuses AES-128 itself (see interop/test_access_control.py), so nothing
        # is left for the after-handshake check.
        assert prio.tls13_unenforced == set()
        assert not any("cannot be restricted" in n for n in prio.notes)
    assert parse_priority("NORMAL:-AES-128-GCM", keywords={}).tls13_unenforced == {
        "TLS_AES_128_GCM_SHA256"
    }
    assert parse_priority("SECURE256:-VERS-TLS1.3", keywords={}).tls13_unenforced == set()
    assert parse_priority("NORMAL", keywords={}).tls13_unenforced == set()


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("NORMAL:+VERS-TLS1.1", "+VERS-TLS1.1"),
        ("NORMAL:+VERS-TLS1.0", "+VERS-TLS1.0"),
        ("NORMAL:+CAMELLIA-128-GCM", "+CAMELLIA-128-GCM"),
        ("NORMAL:-SIGN-RSA-SHA1", "-SIGN-RSA-SHA1"),
        ("NORMAL:%PROFILE_HIGH", "%PROFILE_HIGH"),
        ("NORMAL:+VERS-TLS1.9", "+VERS-TLS1.9"),
        ("NORMAL:AES-128-GCM", "AES-128-GCM"),
        ("LEGACY", "LEGACY"),
        ("NORMAL:-GROUP-ALL:+GROUP-X25519", "GROUP-X25519"),
        ("NORMAL:-VERS-ALL", "NORMAL:-VERS-ALL"),
        ("NORMAL:-CIPHER-ALL:+AES-128-CCM", "NORMAL:-CIPHER-ALL:+AES-128-CCM"),
        ("", ""),
    ],
)
def test_rejects_what_it_cannot_map_naming_the_token(text: str, token: str) -> None:
    with pytest.raises(PriorityError) as info:
        parse_priority(text, keywords={})
    assert info.value.token == token
    assert isinstance(info.value, ValueError)
    if token:
        assert repr(token) in str(info.value) or token in str(info.value)


def test_group_edits_pick_one_ecdh_curve() -> None:
    prio = parse_priority("NORMAL:-GROUP-ALL:+GROUP-SECP521R1:+GROUP-X25519", keywords={})
    assert prio.ecdh_curve == "secp521r1"
    assert parse_priority("NORMAL:-GROUP-X448", keywords={}).ecdh_curve == "prime256v1"
    priority_context("NORMAL:-GROUP-ALL:+GROUP-SECP521R1")  # OpenSSL accepts the curve name


def test_no_tickets_flag_sets_op_no_ticket() -> None:
    assert priority_context("NORMAL:%NO_TICKETS").options & ssl.OP_NO_TICKET
    assert not priority_context("NORMAL").options & ssl.OP_NO_TICKET


def test_at_keywords_resolve_from_gnutls_config_with_fallbacks() -> None:
    keywords = {"SYSTEM": "SECURE256:-VERS-TLS1.3", "MINE": "@SYSTEM:+VERS-TLS1.3"}
    assert parse_priority("@SYSTEM", keywords=keywords).maximum_version == V12
    assert parse_priority("@NOPE,SYSTEM", keywords=keywords).ecdh_curve == "secp384r1"
    assert parse_priority("@MINE", keywords=keywords).maximum_version == V13
    with pytest.raises(PriorityError, match="none of NOPE"):
        parse_priority("@NOPE", keywords=keywords)
    with pytest.raises(PriorityError, match="refer to each other"):
        parse_priority("@LOOP", keywords={"LOOP": "@LOOP"})


def test_an_undefined_keyword_with_a_newline_is_reported_on_one_line() -> None:
    # A keyword name with a newline in it is quoted, so the message stays one line.
    with pytest.raises(PriorityError) as raised:
        parse_priority("@\n0", keywords={})
    assert str(raised.value).startswith("'@\\n0': none of '\\n0' is defined"), raised.value
    assert "\n" not in str(raised.value)


def test_undefined_system_keyword_means_openssl_system_defaults() -> None:
    prio = parse_priority("@SYSTEM:-VERS-TLS1.2", keywords={})
    assert prio.tls12_ciphers is None and prio.minimum_version == V13
    with pytest.raises(PriorityError, match="needs a base keyword"):
        parse_priority("@SYSTEM:-AES-128-CBC", keywords={})


def test_reads_keywords_from_global_and_priorities_sections(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(
        "# comment\nCHARDEV_BRIDGE = NORMAL:-VERS-TLS1.2  # trailing\n"
        "[overrides]\nSYSTEM = ignored\n[priorities]\nSYSTEM=SECURE128\n"
    )
    assert read_priority_keywords(path) == {
        "CHARDEV_BRIDGE": "NORMAL:-VERS-TLS1.2",
        "SYSTEM": "SECURE128",
    }
    assert read_priority_keywords(tmp_path / "missing") == {}


def test_policy_lookup_order_and_reported_source(tmp_path: Path) -> None:
    local = tmp_path / "gnutls-chardev-bridge.config"
    system = tmp_path / "gnutls.config"
    none = resolve_priority(None, local_file=local, system_files=[system])
    assert none.priority is DEFAULT_PRIORITY and none.source.startswith("built-in default")
    system.write_text(f"[priorities]\nSYSTEM = SECURE192\n{APP_KEYWORD} = @SYSTEM\n")
    from_system = resolve_priority(None, local_file=local, system_files=[system])
    assert from_system.source == f"{system} ({APP_KEYWORD})"
    assert from_system.priority.ecdh_curve == "secp384r1"
    local.write_text(f"{APP_KEYWORD} = NORMAL:-VERS-TLS1.2\n")
    from_local = resolve_priority(None, local_file=local, system_files=[system])
    assert from_local.source == f"{local} ({APP_KEYWORD})"
    assert from_local.priority.minimum_version == V13
    explicit = resolve_priority("@SYSTEM", local_file=local, system_files=[system])
    assert explicit.source == "--tls-priority" and explicit.priority.security_level == 4
    local.write_text(f"{APP_KEYWORD} = NORMAL:+BOGUS\n")
    with pytest.raises(PriorityError, match=r"gnutls-chardev-bridge.config \(CHARDEV_BRIDGE\)"):
        resolve_priority(None, local_file=local, system_files=[system])


def test_check_negotiated_flags_tls13_suites_outside_the_policy() -> None:
    prio = parse_priority("SECURE256", keywords={})
    assert check_negotiated(prio, "TLSv1.3", "TLS_AES_256_GCM_SHA384") is None
    message = check_negotiated(prio, "TLSv1.3", "TLS_AES_128_GCM_SHA256")
    assert message is not None and "SECURE256" in message
    assert check_negotiated(prio, "TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384") is None


def test_describe_is_one_log_line() -> None:
    text = parse_priority("SECURE256:-VERS-TLS1.3", keywords={}).describe()
    assert (
        text == "'SECURE256:-VERS-TLS1.3': TLS 1.2, 10 TLS 1.2 suites, ECDH secp384r1, "
        "OpenSSL security level 4"
    )


def test_dh_params_below_the_priority_turn_dhe_off_instead_of_failing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # creds init (like certtool) writes a 2048-bit DH group, below SECURE192/256's level.
    creds = make_creds(tmp_path, key_type="ecdsa-p384")
    assert (creds.server / "dh-params.pem").exists()
    policy = TLSPolicy(
        load_x509_creds(creds.server, "server"), priority=parse_priority("SECURE256", keywords={})
    )
    ctx = make_ssl_context(policy)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert re.search(
        r"dh-params\.pem: too small for the priority 'SECURE256'; DHE suites are off", caplog.text
    )
