"""QEMU authz-list semantics and file format: globs as GLib matches them, rule order, the
JSON file and its one-line errors, and DNs printed as gnutls prints them."""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import os
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chardev_bridge.qemu import pki
from chardev_bridge.qemu.authz import (
    AuthzFileError,
    AuthzList,
    AuthzRule,
    glob_to_regex,
    load_authz_file,
    parse_authz,
)
from chardev_bridge.qemu.dn import qemu_dn
from tests.support.certs import write_authz_file

DN = "C=GB,ST=London,L=City Of London,O=QEMU Test,CN=client.example.com"


@pytest.mark.parametrize(
    ("pattern", "identity", "matches"),
    [
        ("CN=*", "CN=", True),
        ("*", "", True),
        ("O=QEMU Test,CN=*", "O=QEMU Test,CN=a,b", True),
        ("CN=client?", "CN=client1", True),
        ("CN=client?", "CN=client", False),
        ("CN=client?", "CN=client12", False),
        ("CN=??", "CN=é1", True),  # ? is one character, not one byte
        ("CN=[ab]", "CN=a", False),  # no character classes in g_pattern_match_simple
        ("CN=[ab]", "CN=[ab]", True),
        ("CN=a.b", "CN=axb", False),
        ("CN=a\\*", "CN=a\\xyz", True),  # backslash is literal: no escapes
        ("*CN=x", "O=a\nCN=x", True),
    ],
)
def test_glob_follows_g_pattern_match_simple(pattern: str, identity: str, matches: bool) -> None:
    assert (glob_to_regex(pattern).fullmatch(identity) is not None) is matches
    assert AuthzRule(pattern, "allow", "glob").matches(identity) is matches


def test_exact_rule_treats_wildcards_literally() -> None:
    rule = AuthzRule("CN=*", "allow", "exact")
    assert rule.matches("CN=*") and not rule.matches("CN=x")
    assert AuthzRule("CN=x").format == "exact"


def test_first_matching_rule_wins_then_default_policy() -> None:
    acl = AuthzList(
        (
            AuthzRule("O=Corp,CN=evil*", "deny", "glob"),
            AuthzRule("O=Corp,CN=*", "allow", "glob"),
            AuthzRule("O=Corp,CN=evil1", "allow"),  # never reached
        ),
        policy="deny",
    )
    assert acl.is_allowed("O=Corp,CN=alice")
    assert not acl.is_allowed("O=Corp,CN=evil1")
    assert not acl.is_allowed("O=Other,CN=alice")
    assert acl.decide("O=Corp,CN=evil1").describe() == (
        "'O=Corp,CN=evil1' denied by rule 1 (glob 'O=Corp,CN=evil*')"
    )
    assert acl.decide("O=Other,CN=x").describe() == "'O=Other,CN=x' denied by the default policy"
    assert AuthzList(policy="allow").is_allowed("anything")


def test_tls_authz_patterns_allow_matches_and_deny_the_rest() -> None:
    acl = AuthzList.from_patterns(["O=QEMU Test,CN=*", DN])
    assert acl.policy == "deny"
    assert all(r.policy == "allow" and r.format == "glob" for r in acl.rules)
    assert acl.is_allowed("O=QEMU Test,CN=anyone") and acl.is_allowed(DN)
    assert not acl.is_allowed("CN=client.example.com,O=QEMU Test")


def test_qemu_dn_keeps_certificate_order_for_trustme_and_pki_names() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("x.example", common_name="x.example", organization_unit_name="Unit")
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    # trustme writes O, then OU, then CN; rfc4514_string() would print them reversed.
    assert qemu_dn(cert.subject).startswith("O=trustme")
    assert qemu_dn(cert.subject).endswith(",OU=Unit,CN=x.example")
    assert qemu_dn(pki.parse_dn(DN)) == DN
    assert qemu_dn(pki.parse_dn("O=a\\,b,CN=c")) == "O=a\\,b,CN=c"
    assert AuthzList.from_patterns(["O=trustme*,OU=Unit,*"]).allows_name(cert.subject)


def test_rule_rejects_bad_policy_or_format() -> None:
    with pytest.raises(ValueError, match="policy must be"):
        AuthzRule("x", "maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="format must be"):
        AuthzRule("x", "allow", "regex")  # type: ignore[arg-type]


def test_loads_qemu_authz_list_file(tmp_path: Path) -> None:
    path = write_authz_file(
        tmp_path,
        {
            "policy": "deny",
            "rules": [
                {"match": "O=QEMU Test,CN=evil", "policy": "deny"},
                {"match": "O=QEMU Test,CN=*", "policy": "allow", "format": "glob"},
            ],
        },
    )
    acl = load_authz_file(path)
    assert acl == AuthzList(
        (
            AuthzRule("O=QEMU Test,CN=evil", "deny", "exact"),
            AuthzRule("O=QEMU Test,CN=*", "allow", "glob"),
        ),
        "deny",
    )


def test_file_defaults_are_deny_and_no_rules(tmp_path: Path) -> None:
    assert load_authz_file(write_authz_file(tmp_path, {})) == AuthzList((), "deny")
    assert load_authz_file(write_authz_file(tmp_path, {"policy": "allow"})).is_allowed("x")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "invalid JSON at line 1"),
        ("[]", "must contain a JSON object"),
        ({"polcy": "deny"}, "unexpected member 'polcy'"),
        ({"policy": "Deny"}, "policy must be 'deny' or 'allow', not \"Deny\""),
        ({"rules": {}}, "'rules' must be a JSON array"),
        ({"rules": ["CN=x"]}, "rules[0] must be a JSON object"),
        ({"rules": [{"policy": "allow"}]}, "rules[0] lacks 'match'"),
        ({"rules": [{"match": "x"}]}, "rules[0] lacks 'policy'"),
        ({"rules": [{"match": 1, "policy": "allow"}]}, "rules[0].match must be a string"),
        ({"rules": [{"match": "x", "policy": "allow", "format": "regex"}]}, "rules[0].format"),
        ({"rules": [{"match": "x", "policy": "allow", "fmt": "glob"}]}, "unexpected member 'fmt'"),
    ],
)
def test_rejects_bad_authz_files_with_one_line_errors(
    tmp_path: Path, content: object, message: str
) -> None:
    path = write_authz_file(tmp_path, content)
    with pytest.raises(AuthzFileError) as info:
        load_authz_file(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    assert isinstance(info.value, ValueError)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuthzFileError, match="cannot read: No such file"):
        load_authz_file(tmp_path / "nope.json")
    with pytest.raises(AuthzFileError, match="<authz>: must contain"):
        parse_authz(3)


class _Datum(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_uint)]


def _gnutls_dn(der: bytes) -> str:
    """The subject DN as gnutls_x509_crt_get_dn prints it (what QEMU's tls-authz matches)."""
    found = ctypes.util.find_library("gnutls")
    if found is None:
        message = "libgnutls not found (Debian package libgnutls30)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    lib = ctypes.CDLL(found)
    crt = ctypes.c_void_p()
    assert lib.gnutls_x509_crt_init(ctypes.byref(crt)) == 0
    try:
        buf = ctypes.create_string_buffer(der, len(der))
        datum = _Datum(ctypes.cast(buf, ctypes.c_void_p), len(der))
        assert lib.gnutls_x509_crt_import(crt, ctypes.byref(datum), 0) == 0  # DER
        out, size = ctypes.create_string_buffer(8192), ctypes.c_size_t(8192)
        assert lib.gnutls_x509_crt_get_dn(crt, out, ctypes.byref(size)) == 0
        return out.value.decode()
    finally:
        lib.gnutls_x509_crt_deinit(crt)


def _self_signed_der(subject: x509.Name) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


_NAME_TYPES = sorted(
    (name, oid) for name, oid in vars(NameOID).items() if isinstance(oid, x509.ObjectIdentifier)
)


@pytest.mark.parametrize(("label", "oid"), _NAME_TYPES, ids=[n for n, _ in _NAME_TYPES])
def test_qemu_dn_names_every_attribute_type_as_gnutls_does(
    label: str, oid: x509.ObjectIdentifier
) -> None:
    # PrintableString types cannot hold ë or #.
    printable = label in ("SERIAL_NUMBER", "DN_QUALIFIER")
    value = "GB" if "COUNTRY" in label else "Ab, 1+x" if printable else "Zoë, #1+x"
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lab"), x509.NameAttribute(oid, value)]
    )
    assert qemu_dn(subject) == _gnutls_dn(_self_signed_der(subject))


def test_qemu_dn_matches_gnutls_for_multi_valued_and_escaped_names() -> None:
    subject = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "GB")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Ops"),
                    x509.NameAttribute(NameOID.COMMON_NAME, 'a"b\\c<d>;e'),
                ]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "ops@example.org")]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.SERIAL_NUMBER, "42")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.COMMON_NAME, " lead and trail ")]
            ),
        ]
    )
    dn = qemu_dn(subject)
    assert dn == _gnutls_dn(_self_signed_der(subject))
    assert "EMAIL=ops@example.org,serialNumber=42" in dn
