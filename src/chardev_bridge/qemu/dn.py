"""A certificate's distinguished name as gnutls, and so QEMU's ``tls-authz``, prints it:
for the peer's log lines and allow-lists, and for the credential checks' info lines."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

# Attribute types gnutls prints by a name of its own (lib/x509/common.c), where RFC 4514 and
# so cryptography have none or another; tests/unit/test_authz.py checks every one against
# gnutls_x509_crt_get_dn.
_GNUTLS_NAMES: dict[x509.ObjectIdentifier, str] = {
    NameOID.STREET_ADDRESS: "street",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "surName",
    NameOID.GIVEN_NAME: "givenName",
    NameOID.TITLE: "title",
    NameOID.INITIALS: "initials",
    NameOID.GENERATION_QUALIFIER: "generationQualifier",
    NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.EMAIL_ADDRESS: "EMAIL",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionOfIncorporationCountryName",
    NameOID.JURISDICTION_LOCALITY_NAME: "jurisdictionOfIncorporationLocalityName",
    NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME: "jurisdictionOfIncorporationStateOrProvinceName",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
    NameOID.POSTAL_CODE: "postalCode",
}
# Types whose value gnutls prints as RFC 4514 hex (``#`` + the DER of the value), under a
# name for these and under the dotted OID for every type it does not know.
_GNUTLS_HEX_NAMES: dict[x509.ObjectIdentifier, str] = {
    x509.ObjectIdentifier("1.2.643.3.131.1.1"): "INN",
    x509.ObjectIdentifier("1.2.643.100.1"): "OGRN",
    x509.ObjectIdentifier("1.2.643.100.3"): "SNILS",
}
_GNUTLS_TEXT_TYPES = frozenset(
    [
        NameOID.COMMON_NAME,
        NameOID.COUNTRY_NAME,
        NameOID.LOCALITY_NAME,
        NameOID.STATE_OR_PROVINCE_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATIONAL_UNIT_NAME,
        NameOID.USER_ID,
        NameOID.DOMAIN_COMPONENT,
        *_GNUTLS_NAMES,
    ]
)
_STRING_CODECS = {30: "utf-16-be", 28: "utf-32-be"}  # BMPString, UniversalString


def qemu_dn(name: x509.Name) -> str:
    """Format a DN as gnutls (and so QEMU's tls-authz) prints it.

    RDNs in certificate encoding order, RFC 4514 escaping, commas without spaces, gnutls's
    attribute names: ``C=GB,O=QEMU Test,CN=client.example.com,EMAIL=ops@example.org``.
    ``Name.rfc4514_string()`` gives the reverse order and other names for some types, which
    is not what QEMU rules are written against.
    """
    return ",".join("+".join(_gnutls_attribute(a) for a in rdn) for rdn in name.rdns)


def _gnutls_attribute(attr: x509.NameAttribute[str | bytes]) -> str:
    if attr.oid in _GNUTLS_TEXT_TYPES:
        return attr.rfc4514_string(_GNUTLS_NAMES)
    label = _GNUTLS_HEX_NAMES.get(attr.oid, attr.oid.dotted_string)
    value = attr.value if isinstance(attr.value, bytes) else _encode_string(attr)
    tag = attr._type.value  # the ASN.1 universal tag number of the string type
    return f"{label}=#{_der_tlv(tag, value).hex()}"


def _encode_string(attr: x509.NameAttribute[str | bytes]) -> bytes:
    assert isinstance(attr.value, str)
    return attr.value.encode(_STRING_CODECS.get(attr._type.value, "utf-8"))


def _der_tlv(tag: int, content: bytes) -> bytes:
    """One DER primitive: tag, definite length, content (what gnutls hex-prints)."""
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        size = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(size)]) + size
    return bytes([tag]) + length + content
