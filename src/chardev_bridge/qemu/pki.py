"""Make a PKI in QEMU's credential-directory layout (`creds init`, `creds issue`, `creds revoke`).

Layout written by :func:`init_pki`::

    DIR/ca/      ca-cert.pem  ca-key.pem            (mode 0700: holds the CA key)
    DIR/server/  ca-cert.pem  server-cert.pem  server-key.pem  dh-params.pem
    DIR/client/  ca-cert.pem  client-cert.pem  client-key.pem

``DIR/server`` and ``DIR/client`` are ready for QEMU's
``-object tls-creds-x509,dir=...,endpoint=server|client``. ``dh-params.pem`` holds the RFC 7919
``ffdhe2048`` group: without the file QEMU generates 2048-bit DH parameters at every start
(0.3-1.6 s per credentials object).

Everything is built with the ``cryptography`` package. The certificates carry exactly what
QEMU 7.2's load-time checks look at: the CA has critical basicConstraints CA:TRUE and a critical
keyUsage keyCertSign+cRLSign; leaves are CA:FALSE with a critical keyUsage
digitalSignature+keyEncipherment (upstream QEMU 7.2.0 still insists on keyEncipherment, even for
ECDSA keys), a critical extendedKeyUsage serverAuth or clientAuth, subjectAltNames and key
identifiers. Private keys are written mode 0600 and no existing file is ever overwritten (CRLs
excepted: revoking updates them).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
KEY_TYPES: tuple[KeyType, ...] = get_args(KeyType)
Role = Literal["server", "client"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost",)
DEFAULT_IPS: tuple[str, ...] = ("127.0.0.1", "::1")
DEFAULT_CA_DN = "O=chardev-bridge,CN=chardev-bridge CA"
DEFAULT_CLIENT_DN = "O=chardev-bridge,CN=client"
DEFAULT_DAYS = 3650
DEFAULT_CRL_DAYS = 30
# Certificates start an hour in the past: QEMU refuses a certificate that "is not yet active",
# and a peer whose clock runs slightly behind would otherwise do so for a fresh one.
BACKDATE = dt.timedelta(hours=1)


class PkiError(Exception):
    """A PKI operation could not be done (existing files, unreadable CA, bad input)."""


@dataclass(frozen=True)
class Issued:
    """A certificate with its key, as issued by :func:`issue_leaf` or :func:`make_ca`."""

    cert: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True)
class PkiLayout:
    """The directories written by :func:`init_pki`."""

    root: Path
    ca_dir: Path
    server_dir: Path
    client_dir: Path


def generate_key(key_type: KeyType = "ecdsa-p256") -> PrivateKey:
    """Generate a private key: ECDSA P-256 (default) or P-384, or RSA of 2048/3072/4096 bits."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":  # what gnutls's SECURE192/SECURE256 accept
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa-2048", "rsa-3072", "rsa-4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise PkiError(f"unknown key type {key_type!r} (choose from {', '.join(KEY_TYPES)})")


def parse_dn(text: str) -> x509.Name:
    """Parse a DN written the way QEMU's tls-authz prints it, first RDN first.

    ``"C=GB,O=QEMU Test,CN=client"`` gives a name whose encoding order is C, O, CN, so
    :func:`chardev_bridge.qemu.dn.qemu_dn` prints it back unchanged. RFC 4514 escaping applies
    (``\\,`` for a literal comma). RFC 4514 itself writes the last RDN first, hence the reversal.
    """
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise PkiError(f"cannot parse distinguished name {text!r}: {exc}") from None
    if not name.rdns:
        raise PkiError(f"empty distinguished name {text!r}")
    return x509.Name(list(reversed(name.rdns)))


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    # A P-384 key signs with SHA-384: gnutls's SECURE192 wants 192-bit strength throughout.
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _validity(
    builder: x509.CertificateBuilder, days: int, now: dt.datetime | None
) -> x509.CertificateBuilder:
    if days < 1:
        raise PkiError(f"lifetime must be at least 1 day, not {days}")
    start = (now or _now()) - BACKDATE
    return builder.not_valid_before(start).not_valid_after(start + BACKDATE + dt.timedelta(days))


def make_ca(
    dn: str | x509.Name = DEFAULT_CA_DN,
    *,
    key: PrivateKey | None = None,
    key_type: KeyType = "ecdsa-p256",
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> Issued:
    """Make a self-signed CA: critical CA:TRUE and critical keyUsage keyCertSign+cRLSign."""
    name = parse_dn(dn) if isinstance(dn, str) else dn
    key = key or generate_key(key_type)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    cert = _validity(builder, days, now).sign(key, _hash_for(key))
    return Issued(cert, key)


def _san(hostnames: Sequence[str], ips: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiError(f"not an IP address: {ip!r}") from None
    return names


def issue_leaf(
    ca: Issued,
    role: Role,
    *,
    dn: str | x509.Name | None = None,
    hostnames: Sequence[str] = (),
    ips: Sequence[str] = (),
    key: PrivateKey | None = None,
    key_type: KeyType = "ecdsa-p256",
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> Issued:
    """Issue a server or client certificate signed by ``ca``.

    A server certificate needs at least one hostname or IP (they become subjectAltNames; QEMU as
    a TLS client matches its ``host=`` against them). Its DN defaults to ``CN=<first name>``;
    a client's DN defaults to :data:`DEFAULT_CLIENT_DN`.
    """
    if role == "server" and not (hostnames or ips):
        raise PkiError("a server certificate needs at least one hostname or IP address")
    if dn is None:
        dn = DEFAULT_CLIENT_DN if role == "client" else None
    if dn is None:
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, (list(hostnames) + list(ips))[0])]
        )
    else:
        name = parse_dn(dn) if isinstance(dn, str) else dn
    key = key or generate_key(key_type)
    purpose = (
        ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Critical, so QEMU's purpose check applies: a client certificate cannot serve.
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    san = _san(hostnames, ips)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = _validity(builder, days, now).sign(ca.key, _hash_for(ca.key))
    return Issued(cert, key)


def make_crl(
    ca: Issued,
    revoked: Iterable[int] | dict[int, dt.datetime],
    *,
    days: int = DEFAULT_CRL_DAYS,
    now: dt.datetime | None = None,
    number: int | None = None,
) -> x509.CertificateRevocationList:
    """Make a CRL signed by ``ca`` that revokes the given serial numbers.

    ``revoked`` maps serials to revocation dates, or is a plain iterable of serials revoked
    ``now``. The CRL is valid from ``now`` (backdated like certificates) for ``days`` days; a CRL
    past its next update makes QEMU refuse every client.
    """
    when = now or _now()
    dates = revoked if isinstance(revoked, dict) else dict.fromkeys(revoked, when)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(when - BACKDATE)
        .next_update(when + dt.timedelta(days=days))
        .add_extension(
            x509.CRLNumber(number if number is not None else int(when.timestamp())), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    for serial, date in sorted(dates.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date).build()
        )
    return builder.sign(ca.key, _hash_for(ca.key))


# RFC 7919 defines ffdhe2048's prime by a formula over e; computing it avoids a 512-digit
# constant. p = 2^2048 - 2^1984 + (floor(2^1918 * e) + 560316) * 2^64 - 1, generator 2.
def _floor_e_times_2_pow(bits: int) -> int:
    guard = 64
    scale = 1 << (bits + guard)
    total, term, k = 0, scale, 0
    while term:
        total += term
        k += 1
        term //= k
    return total >> guard


FFDHE2048_P = (1 << 2048) - (1 << 1984) + ((_floor_e_times_2_pow(1918) + 560316) << 64) - 1


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # +1: room for a sign bit
    return b"\x02" + _der_length(len(body)) + body


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def dh_params_pem() -> bytes:
    """``dh-params.pem`` for QEMU: the RFC 7919 ffdhe2048 group as PKCS#3 ``DH PARAMETERS``.

    Encoded here because OpenSSL 3 recognises the named group and ``cryptography`` then writes
    ``X9.42 DH PARAMETERS``, which gnutls's PKCS#3 import (and so QEMU) rejects. The DER is just
    SEQUENCE { INTEGER p, INTEGER g }; a test checks that ``cryptography`` and QEMU read it back.
    """
    body = _der_integer(FFDHE2048_P) + _der_integer(2)
    der = b"\x30" + _der_length(len(body)) + body
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    text = "-----BEGIN DH PARAMETERS-----\n" + "\n".join(lines) + "\n-----END DH PARAMETERS-----\n"
    return text.encode()


# --- files -------------------------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM encoding of a key, encrypted when a password is given (gnutls reads both)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: refuse to overwrite, atomically, even if the file appeared after our pre-check.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits; keys must be exactly 0600
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _write_new(tmp, data, mode)
    os.replace(tmp, path)


def _refuse_existing(paths: Iterable[Path]) -> None:
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise PkiError("refusing to overwrite existing file(s): " + ", ".join(existing))


def _write_files(files: dict[Path, tuple[bytes, int]], dir_modes: dict[Path, int]) -> None:
    _refuse_existing(files)
    for directory, mode in dir_modes.items():
        directory.mkdir(mode=mode, parents=True, exist_ok=True)
    for path, (data, mode) in files.items():
        _write_new(path, data, mode)


def _leaf_files(
    directory: Path, role: Role, leaf: Issued, ca_cert: x509.Certificate, password: bytes | None
) -> dict[Path, tuple[bytes, int]]:
    files = {
        directory / "ca-cert.pem": (cert_pem(ca_cert), 0o644),
        directory / f"{role}-cert.pem": (cert_pem(leaf.cert), 0o644),
        directory / f"{role}-key.pem": (key_pem(leaf.key, password), 0o600),
    }
    if role == "server":
        files[directory / "dh-params.pem"] = (dh_params_pem(), 0o644)
    return files


def init_pki(
    root: str | os.PathLike[str],
    *,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    ips: Sequence[str] = DEFAULT_IPS,
    client_dn: str = DEFAULT_CLIENT_DN,
    server_dn: str | None = None,
    ca_dn: str = DEFAULT_CA_DN,
    key_type: KeyType = "ecdsa-p256",
    days: int = DEFAULT_DAYS,
    key_password: bytes | None = None,
) -> PkiLayout:
    """Create ``root/ca``, ``root/server`` and ``root/client`` (see the module docstring).

    Nothing is written when any target file already exists (:class:`PkiError`).
    ``key_password`` encrypts the server and client keys (QEMU's ``passwordid``), never the CA's.
    """
    base = Path(root)
    layout = PkiLayout(base, base / "ca", base / "server", base / "client")
    ca = make_ca(ca_dn, key_type=key_type, days=days)
    server = issue_leaf(
        ca, "server", dn=server_dn, hostnames=hostnames, ips=ips, key_type=key_type, days=days
    )
    client = issue_leaf(ca, "client", dn=client_dn, key_type=key_type, days=days)
    files = {
        layout.ca_dir / "ca-cert.pem": (cert_pem(ca.cert), 0o644),
        layout.ca_dir / "ca-key.pem": (key_pem(ca.key), 0o600),
        **_leaf_files(layout.server_dir, "server", server, ca.cert, key_password),
        **_leaf_files(layout.client_dir, "client", client, ca.cert, key_password),
    }
    _write_files(files, {layout.ca_dir: 0o700, layout.server_dir: 0o755, layout.client_dir: 0o755})
    return layout


def load_ca(ca_dir: str | os.PathLike[str], password: bytes | None = None) -> Issued:
    """Load ``ca-cert.pem`` and ``ca-key.pem`` from a CA directory (``DIR/ca``)."""
    directory = Path(ca_dir)
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca-cert.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), password)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot load the CA from {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"unsupported CA key type in {directory / 'ca-key.pem'}")
    return Issued(cert, key)


def issue_into(
    ca_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    role: Role,
    *,
    dn: str | None = None,
    hostnames: Sequence[str] = (),
    ips: Sequence[str] = (),
    key_type: KeyType = "ecdsa-p256",
    days: int = DEFAULT_DAYS,
    key_password: bytes | None = None,
) -> Issued:
    """Issue another server or client certificate from an existing CA into ``out_dir``.

    ``out_dir`` gets ``ca-cert.pem`` and ``<role>-cert.pem``/``<role>-key.pem`` (plus
    ``dh-params.pem`` for a server), ready to be a QEMU credentials dir. Refuses to overwrite.
    """
    ca = load_ca(ca_dir)
    leaf = issue_leaf(ca, role, dn=dn, hostnames=hostnames, ips=ips, key_type=key_type, days=days)
    out = Path(out_dir)
    _write_files(_leaf_files(out, role, leaf, ca.cert, key_password), {out: 0o755})
    return leaf


def parse_serial(text: str) -> int:
    """Parse a serial number written in hex as gnutls/openssl print it (``0x1f``, ``1f:a0``)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise PkiError(f"not a hexadecimal serial number: {text!r}") from None
    if value <= 0:
        raise PkiError(f"serial numbers are positive: {text!r}")
    return value


def revoke(
    ca_dir: str | os.PathLike[str],
    serials: Iterable[int],
    *,
    install: Sequence[str | os.PathLike[str]] = (),
    days: int = DEFAULT_CRL_DAYS,
) -> x509.CertificateRevocationList:
    """Add serials to ``ca_dir/ca-crl.pem`` (created if absent) and copy it into ``install``.

    Serials already in the existing CRL keep their revocation dates. Each ``install`` directory
    (a server-endpoint credentials dir) gets the new CRL as ``ca-crl.pem``, replaced atomically.
    Calling with no serials just re-signs the CRL with a fresh validity period.
    """
    directory = Path(ca_dir)
    ca = load_ca(directory)
    crl_path = directory / "ca-crl.pem"
    dates: dict[int, dt.datetime] = {}
    number = 1
    if crl_path.exists():
        try:
            old = x509.load_pem_x509_crl(crl_path.read_bytes())
        except ValueError as exc:
            raise PkiError(f"cannot read the existing CRL {crl_path}: {exc}") from None
        dates = {r.serial_number: r.revocation_date_utc for r in old}
        with contextlib.suppress(x509.ExtensionNotFound):
            number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    now = _now()
    for serial in serials:
        dates.setdefault(serial, now)
    crl = make_crl(ca, dates, days=days, now=now, number=number)
    pem = crl.public_bytes(serialization.Encoding.PEM)
    for target in [directory, *map(Path, install)]:
        _write_replace(target / "ca-crl.pem", pem)
    return crl
