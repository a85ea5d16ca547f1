"""TLS-PSK credentials, as QEMU's ``tls-creds-psk``: ``DIR/keys.psk`` on Python's ``ssl``.

QEMU keeps pre-shared keys in ``DIR/keys.psk``, one ``username:hexkey`` per line. As a TLS
client it sends the identity ``username`` (property ``username``, default ``qemu``) with that
user's key; as a TLS server it looks up whatever identity the client sends and sends no
identity hint. Its gnutls priority is the configured one (``NORMAL``) plus
``+ECDHE-PSK:+DHE-PSK:+PSK``, so a QEMU 7.2 peer speaks TLS 1.3 PSK (with ECDHE) or the TLS 1.2
PSK suites listed in :data:`PSK_SUITES`.

Where PSK comes from (Python 3.11 ``ssl`` has no PSK API):

* Python 3.13+: the standard library's ``SSLContext.set_psk_client_callback`` /
  ``set_psk_server_callback``. The callbacks live on the context; nothing is needed per
  connection.
* Python 3.11/3.12: the ``sslpsk3`` C extension (``pip install 'chardev-bridge[psk]'``). Its
  ``SSLPSKContext`` makes SSL objects that re-run the PSK set-up on every ``do_handshake()``
  call, and on a server that set-up calls ``SSL_set_accept_state()``, which restarts a
  handshake that is waiting for data. Our engine retries ``do_handshake()`` each time data
  arrives, so the context here creates plain ``ssl.SSLObject``\\ s and the set-up runs once,
  through :attr:`TLSSetup.prepare <chardev_bridge.tls.setup.TLSSetup.prepare>`.

  As a TLS *client* on these versions only TLS 1.2 PSK works: CPython before 3.13 gives every
  context (client ones too) the session id context ``"Python"``, and OpenSSL then rejects its
  own TLS 1.3 external-PSK session (``ATTEMPT_TO_REUSE_SESSION_IN_DIFFERENT_CONTEXT``, CPython
  gh-105293, fixed in 3.13). The client context is therefore capped at TLS 1.2 there; QEMU
  accepts TLS 1.2 PSK (DHE-PSK/ECDHE-PSK, forward secret). The server side does TLS 1.3 on
  every version.

OpenSSL's PSK callbacks bind a TLS 1.3 PSK to SHA-256, so TLS 1.3 PSK sessions use
TLS_AES_128_GCM_SHA256 or TLS_CHACHA20_POLY1305_SHA256 (gnutls does the same).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import ssl
import stat
import sys
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, cast

from chardev_bridge.qemu.credfiles import CredentialError
from chardev_bridge.qemu.priority import TLS12_SUITES, TlsPriority
from chardev_bridge.tls.errors import describe_tls_error, root_cause
from chardev_bridge.tls.resumption import disable_resumption
from chardev_bridge.tls.setup import Endpoint, TLSSetup

log = logging.getLogger("chardev_bridge")


KEYS_FILE = "keys.psk"
DH_PARAMS_FILE = "dh-params.pem"
# QEMU's default identity for a PSK client (crypto/tlscredspsk.c).
DEFAULT_USERNAME = "qemu"
INSTALL_HINT = "pip install 'chardev-bridge[psk]'"
# Longest key and identity that OpenSSL 1.1.1 and 3.x both take from a PSK callback
# (PSK_MAX_PSK_LEN 256/512, PSK_MAX_IDENTITY_LEN 128/256, less the identity's NUL); longer
# ones would make every handshake fail without saying why.
MAX_KEY_BYTES = 256
MAX_IDENTITY_BYTES = 127

# True when this Python's ssl module has the PSK API (3.13+ built with PSK-capable OpenSSL).
# Tests patch it to exercise the sslpsk3 route on a newer Python.
NATIVE_PSK: bool = hasattr(ssl.SSLContext, "set_psk_client_callback")

# TLS 1.2 PSK suites of gnutls's NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK (what QEMU 7.2 offers), with
# gnutls's key-exchange order: forward-secret ECDHE-PSK, then DHE-PSK, then plain PSK.
# (kx, cipher, mac) -> OpenSSL name; ciphers and MACs use priority.py's gnutls names.
PSK_KXS = ("ECDHE-PSK", "DHE-PSK", "PSK")
PSK_SUITES: dict[tuple[str, str, str], str] = {
    ("ECDHE-PSK", "CHACHA20-POLY1305", "AEAD"): "ECDHE-PSK-CHACHA20-POLY1305",
    ("ECDHE-PSK", "AES-256-CBC", "SHA1"): "ECDHE-PSK-AES256-CBC-SHA",
    ("ECDHE-PSK", "AES-256-CBC", "SHA384"): "ECDHE-PSK-AES256-CBC-SHA384",
    ("ECDHE-PSK", "AES-128-CBC", "SHA1"): "ECDHE-PSK-AES128-CBC-SHA",
    ("ECDHE-PSK", "AES-128-CBC", "SHA256"): "ECDHE-PSK-AES128-CBC-SHA256",
    ("DHE-PSK", "AES-256-GCM", "AEAD"): "DHE-PSK-AES256-GCM-SHA384",
    ("DHE-PSK", "CHACHA20-POLY1305", "AEAD"): "DHE-PSK-CHACHA20-POLY1305",
    ("DHE-PSK", "AES-256-CCM", "AEAD"): "DHE-PSK-AES256-CCM",
    ("DHE-PSK", "AES-256-CBC", "SHA1"): "DHE-PSK-AES256-CBC-SHA",
    ("DHE-PSK", "AES-256-CBC", "SHA384"): "DHE-PSK-AES256-CBC-SHA384",
    ("DHE-PSK", "AES-128-GCM", "AEAD"): "DHE-PSK-AES128-GCM-SHA256",
    ("DHE-PSK", "AES-128-CCM", "AEAD"): "DHE-PSK-AES128-CCM",
    ("DHE-PSK", "AES-128-CBC", "SHA1"): "DHE-PSK-AES128-CBC-SHA",
    ("DHE-PSK", "AES-128-CBC", "SHA256"): "DHE-PSK-AES128-CBC-SHA256",
    ("PSK", "AES-256-GCM", "AEAD"): "PSK-AES256-GCM-SHA384",
    ("PSK", "CHACHA20-POLY1305", "AEAD"): "PSK-CHACHA20-POLY1305",
    ("PSK", "AES-256-CCM", "AEAD"): "PSK-AES256-CCM",
    ("PSK", "AES-256-CBC", "SHA1"): "PSK-AES256-CBC-SHA",
    ("PSK", "AES-256-CBC", "SHA384"): "PSK-AES256-CBC-SHA384",
    ("PSK", "AES-128-GCM", "AEAD"): "PSK-AES128-GCM-SHA256",
    ("PSK", "AES-128-CCM", "AEAD"): "PSK-AES128-CCM",
    ("PSK", "AES-128-CBC", "SHA1"): "PSK-AES128-CBC-SHA",
    ("PSK", "AES-128-CBC", "SHA256"): "PSK-AES128-CBC-SHA256",
}
# gnutls NORMAL's (cipher, MAC) pairs in its order, used when no priority restricts them.
_NORMAL_CIPHER_MACS = (
    ("AES-256-GCM", "AEAD"),
    ("CHACHA20-POLY1305", "AEAD"),
    ("AES-256-CCM", "AEAD"),
    ("AES-256-CBC", "SHA1"),
    ("AES-128-GCM", "AEAD"),
    ("AES-128-CCM", "AEAD"),
    ("AES-128-CBC", "SHA1"),
)
# TLS 1.3 suites usable with a callback PSK (bound to SHA-256 by OpenSSL and gnutls alike).
PSK_TLS13_SUITES = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_CCM_SHA256"}
)

ClientCallback = Callable[[str | None], tuple[str | None, bytes]]
ServerCallback = Callable[[str | None], bytes]


class PskUnavailable(CredentialError):
    """This Python cannot do TLS-PSK; the message says what to install.

    A :class:`~chardev_bridge.qemu.credfiles.CredentialError`, so the CLI reports it as a start-up
    error in one line, like any unusable credential.
    """


class _SslPskContext(Protocol):
    """The part of ``sslpsk3.SSLPSKContext`` (2.x) used here; sslpsk3 ships no type hints."""

    sslobject_class: type[ssl.SSLObject]

    def set_psk_client_callback(self, callback: ClientCallback | None) -> None: ...

    def set_psk_server_callback(
        self, callback: ServerCallback | None, identity_hint: str | None = None
    ) -> None: ...

    def setup_psk_callbacks(self, sock: ssl.SSLObject) -> None: ...


def unavailable_message(detail: str | None = None) -> str:
    """Why PSK cannot be used here and what to install (one line)."""
    message = (
        f"TLS-PSK (--tls-creds-psk) needs Python 3.13 or newer, or the sslpsk3 package on "
        f"Python {sys.version_info.major}.{sys.version_info.minor}: install it with "
        f"{INSTALL_HINT} (it builds a C extension: needs a C compiler and the OpenSSL and "
        "Python headers, e.g. apt-get install gcc libssl-dev python3-dev)"
    )
    return f"{message}; {detail}" if detail else message


def _import_sslpsk3() -> object:
    """The ``sslpsk3`` module, or :class:`PskUnavailable` saying how to get it."""
    try:
        return importlib.import_module("sslpsk3")
    except ImportError as exc:
        # Not installed, or built against another OpenSSL/Python (undefined symbol ...).
        raise PskUnavailable(unavailable_message(f"import sslpsk3 failed: {exc}")) from None


def check_psk_available() -> str:
    """Which PSK route this Python uses (for the start-up log); PskUnavailable if none."""
    if NATIVE_PSK:
        return "Python ssl (native PSK API)"
    _import_sslpsk3()
    try:
        return f"sslpsk3 {importlib.metadata.version('sslpsk3')}"
    except importlib.metadata.PackageNotFoundError:
        return "sslpsk3"


def _keys_path(directory: str | os.PathLike[str]) -> Path:
    path = Path(directory) / KEYS_FILE
    # QEMU checks access(path, R_OK) first and reports errno in these words.
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CredentialError(f"Unable to access credentials {path}: {reason}") from None
    return path


def load_psk_keys(directory: str | os.PathLike[str]) -> dict[str, bytes]:
    """Read QEMU's ``DIR/keys.psk``: ``{username: key}``.

    Each line is ``username:hexkey``; the username ends at the first ``:``. As in QEMU (and
    gnutls for the server side) the first line for a username wins and lines without ``:``
    are ignored. Blank lines are skipped and trailing whitespace (a CRLF file) is tolerated,
    which QEMU does not do. Raises :class:`CredentialError` in QEMU's words for a missing or
    unreadable file, and naming the line for a key that is not hex, empty, or too long.
    """
    path = _keys_path(directory)
    mode = path.stat().st_mode
    if mode & 0o077:
        # Same warning as `creds check` gives for private keys; QEMU says nothing.
        log.warning(
            "PSK file %s is accessible by group or others (mode %04o): chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CredentialError(f"PSK file {path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise CredentialError(f"Cannot read PSK file {path}: {exc.strerror}") from None
    keys: dict[str, bytes] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip()
        if ":" not in line:
            if line:
                log.warning("%s line %d has no ':' (username:hexkey): ignored", path, number)
            continue
        username, hexkey = line.split(":", 1)
        if username in keys:
            continue
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            raise CredentialError(
                f"PSK file {path} line {number}: the key for {username!r} is not hexadecimal"
            ) from None
        if not key:
            raise CredentialError(f"PSK file {path} line {number}: empty key for {username!r}")
        if len(key) > MAX_KEY_BYTES:
            raise CredentialError(
                f"PSK file {path} line {number}: the key for {username!r} has {len(key)} "
                f"bytes; OpenSSL takes at most {MAX_KEY_BYTES}"
            )
        keys[username] = key
    return keys


def psk_ciphers(priority: TlsPriority | None) -> str:
    """The TLS 1.2 PSK suites (OpenSSL names, ``:``-joined) allowed by ``priority``.

    The priority's TLS 1.2 list names certificate suites; the ciphers and MACs it allows are
    combined with the PSK key exchanges, as QEMU does by appending ``+ECDHE-PSK:+DHE-PSK:+PSK``
    to the priority string. Without a restriction, gnutls NORMAL's set.
    """
    pairs: list[tuple[str, str]] = []
    if priority is None or priority.tls12_ciphers is None:
        pairs = list(_NORMAL_CIPHER_MACS)
    else:
        by_name = {name: (cipher, mac) for (_, cipher, mac), (name, _) in TLS12_SUITES.items()}
        for name in priority.tls12_ciphers.split(":"):
            pair = by_name.get(name)
            if pair is not None and pair not in pairs:
                pairs.append(pair)
    names = [
        PSK_SUITES[(kx, cipher, mac)]
        for kx in PSK_KXS
        for cipher, mac in pairs
        if (kx, cipher, mac) in PSK_SUITES
    ]
    if not names:
        raise CredentialError(
            f"the TLS priority {priority.text if priority else 'NORMAL'!r} leaves no TLS 1.2 "
            "PSK cipher suite"
        )
    return ":".join(names)


def _tls13_possible(priority: TlsPriority | None) -> bool:
    if priority is None:
        return True
    if priority.maximum_version < ssl.TLSVersion.TLSv1_3:
        return False
    return priority.tls13_allowed is None or bool(priority.tls13_allowed & PSK_TLS13_SUITES)


def _new_context(server: bool, priority: TlsPriority | None) -> tuple[ssl.SSLContext, str]:
    """A context with the PSK cipher and version settings; (context, route description)."""
    protocol = ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT
    if NATIVE_PSK:
        ctx = ssl.SSLContext(protocol)
        route = "native"
    else:
        module = _import_sslpsk3()
        # SSLPSKContext is an ssl.SSLContext subclass; typed through _SslPskContext.
        ctx = cast(ssl.SSLContext, getattr(module, "SSLPSKContext")(protocol))  # noqa: B009
        # Plain SSLObjects: sslpsk3's own re-run the PSK set-up (SSL_set_accept_state on a
        # server) on every do_handshake() retry, which restarts the handshake. prepare() runs
        # it once instead.
        cast(_SslPskContext, ctx).sslobject_class = ssl.SSLObject
        route = "sslpsk3"
    # No TLS 1.2 renegotiation: our TLS stream never answers records while only reading.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    minimum = priority.minimum_version if priority else ssl.TLSVersion.TLSv1_2
    maximum = ssl.TLSVersion.TLSv1_3 if _tls13_possible(priority) else ssl.TLSVersion.TLSv1_2
    if not server and not NATIVE_PSK:
        # CPython < 3.13 breaks TLS 1.3 external PSK on clients (module docstring).
        maximum = ssl.TLSVersion.TLSv1_2
    if minimum > maximum:
        why = (
            "a TLS 1.3 PSK client needs Python 3.13 or newer"
            if not server and not NATIVE_PSK and _tls13_possible(priority)
            else "TLS 1.3 PSK needs TLS_AES_128_GCM_SHA256 or TLS_CHACHA20_POLY1305_SHA256"
        )
        text = priority.text if priority else "(default)"
        raise PskUnavailable(f"the TLS priority {text!r} allows TLS 1.3 only, but {why}")
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum
    ciphers = psk_ciphers(priority)
    if priority is not None and priority.security_level is not None:
        ciphers += f":@SECLEVEL={priority.security_level}"
    try:
        ctx.set_ciphers(ciphers)
        if priority is not None and priority.ecdh_curve is not None:
            ctx.set_ecdh_curve(priority.ecdh_curve)
    except (ssl.SSLError, ValueError) as exc:
        text = priority.text if priority else "(default)"
        raise CredentialError(f"OpenSSL refused the PSK settings for {text!r}: {exc}") from None
    if priority is not None and priority.no_tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx, route


def _client_callback(username: str, key: bytes) -> ClientCallback:
    def callback(hint: str | None) -> tuple[str | None, bytes]:
        # QEMU sends no hint (and TLS 1.3 has none): the identity is always ours.
        return username, key

    return callback


def _server_callback(keys: Mapping[str, bytes], path: Path) -> ServerCallback:
    def callback(identity: str | None) -> bytes:
        # Must not raise: sslpsk3 would leave the exception pending inside OpenSSL's call.
        key = keys.get(identity or "")
        if key is None:
            # b"" makes OpenSSL refuse the handshake (TLS 1.2: alert unknown_psk_identity;
            # TLS 1.3: no PSK, and without a certificate the handshake fails). gnutls would
            # fake a key instead; the log line is more use to whoever runs the bridge.
            log.warning("PSK client identity %r is not in %s: refused", identity, path)
            return b""
        log.debug("PSK client identity %r", identity)
        return key

    return callback


def build_psk_setup(
    directory: str | os.PathLike[str],
    *,
    endpoint: Endpoint,
    username: str | None = None,
    priority: TlsPriority | None = None,
) -> TLSSetup:
    """The :class:`TLSSetup` for QEMU-style PSK credentials in ``directory``.

    ``endpoint`` is the TLS role. A client sends the identity ``username`` (``qemu`` when
    None, as QEMU) with its key from ``keys.psk``; a server accepts any identity listed there
    and, like QEMU, sends no identity hint and refuses ``username`` ("username should not be
    set when endpoint=server"). A server also loads ``dh-params.pem`` when present, as QEMU,
    which enables the DHE-PSK suites. ``priority`` (None: gnutls NORMAL) picks versions,
    TLS 1.2 ciphers and the ECDH group. There is no certificate name to check, and QEMU sends
    no SNI, so neither do we.

    Raises :class:`PskUnavailable` when this Python has no PSK route (message: what to
    install) and :class:`CredentialError` for an unusable ``keys.psk`` (QEMU's words where
    QEMU has them).
    """
    server = endpoint == "server"
    # Fail on a missing PSK route before reading keys: the fix (install) comes first.
    if not NATIVE_PSK:
        _import_sslpsk3()
    path = Path(directory) / KEYS_FILE
    if server and username is not None:
        raise CredentialError("username should not be set when endpoint=server")
    keys = load_psk_keys(directory)
    ctx, route = _new_context(server, priority)
    if server:
        dh_params = Path(directory) / DH_PARAMS_FILE
        if dh_params.exists():
            try:
                ctx.load_dh_params(str(dh_params))
            except (OSError, ssl.SSLError) as exc:
                raise CredentialError(f"Cannot load DH parameters {dh_params}: {exc}") from None
        disable_resumption(ctx)
        # Our suite order (forward-secret first) rather than the client's.
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        _set_server_callback(ctx, route, _server_callback(keys, path))
    else:
        name = DEFAULT_USERNAME if username is None else username
        if name not in keys:
            raise CredentialError(f"Username {name} not found in PSK file {path}")
        if len(name.encode()) > MAX_IDENTITY_BYTES:
            raise CredentialError(
                f"PSK username {name!r} is longer than {MAX_IDENTITY_BYTES} bytes"
            )
        # No name check and no SNI, as QEMU. But a server that ignores our PSK and shows a
        # certificate instead (possible in TLS 1.3) must not be accepted: CERT_REQUIRED with
        # an empty trust store fails any certificate, and PSK handshakes involve none.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        _set_client_callback(ctx, route, _client_callback(name, keys[name]))
    prepare = _forgetting_prepare(cast(_SslPskContext, ctx)) if route == "sslpsk3" else None
    return TLSSetup(
        context=ctx,
        server_side=server,
        server_hostname=None,
        prepare=prepare,
    )


def _forgetting_prepare(ctx: _SslPskContext) -> Callable[[ssl.SSLObject], None]:
    """sslpsk3's per-connection set-up, plus the clean-up it lacks.

    sslpsk3 files every connection's context in a module dict keyed by its ``SSL *`` and
    never removes it: a server running for months would keep one entry per address ever
    used. The entry this connection added is removed when its ``SSLObject`` is freed, which
    happens before OpenSSL frees the ``SSL *`` (so before the address can be used again).
    """
    registry: dict[int, object] = importlib.import_module("sslpsk3.sslpsk3").psk_contexts

    def prepare(obj: ssl.SSLObject) -> None:
        known = len(registry)
        ctx.setup_psk_callbacks(obj)
        if len(registry) > known:
            # Dicts keep insertion order: the last key is the one just added.
            weakref.finalize(obj, registry.pop, next(reversed(registry)), None)

    return prepare


def _set_client_callback(ctx: ssl.SSLContext, route: str, callback: ClientCallback) -> None:
    if route == "sslpsk3":
        cast(_SslPskContext, ctx).set_psk_client_callback(callback)
    elif sys.version_info >= (3, 13):
        ctx.set_psk_client_callback(callback)
    else:  # pragma: no cover - NATIVE_PSK is False before 3.13
        raise AssertionError("native PSK before Python 3.13")


def _set_server_callback(ctx: ssl.SSLContext, route: str, callback: ServerCallback) -> None:
    if route == "sslpsk3":
        cast(_SslPskContext, ctx).set_psk_server_callback(callback, None)
    elif sys.version_info >= (3, 13):
        ctx.set_psk_server_callback(callback, None)
    else:  # pragma: no cover - NATIVE_PSK is False before 3.13
        raise AssertionError("native PSK before Python 3.13")


# How a PSK key mismatch shows (OpenSSL reason codes): gnutls cannot decrypt our Finished
# (TLS 1.2: alert bad_record_mac, or QEMU just closes) or verify our binder (TLS 1.3: alert
# decrypt_error); as a server we see our peer's binder or Finished fail.
_KEY_MISMATCH = frozenset(
    {
        "SSLV3_ALERT_BAD_RECORD_MAC",
        "DECRYPTION_FAILED_OR_BAD_RECORD_MAC",
        "TLSV1_ALERT_DECRYPT_ERROR",
        "BINDER_DOES_NOT_VERIFY",
        "DIGEST_CHECK_FAILED",
        "UNEXPECTED_EOF_WHILE_READING",
    }
)
_UNKNOWN_IDENTITY = {
    # TLS 1.2, as server and client.
    "PSK_IDENTITY_NOT_FOUND": "the client's PSK identity is not in our keys.psk",
    "TLSV1_ALERT_UNKNOWN_PSK_IDENTITY": (
        "the peer does not know our PSK identity (alert unknown_psk_identity)"
    ),
    # TLS 1.3 server: no PSK matched, so OpenSSL tried a certificate handshake, and a PSK
    # server has no certificate.
    "NO_SUITABLE_SIGNATURE_ALGORITHM": (
        "the client offered no PSK identity that is in our keys.psk"
    ),
}
# TLS 1.3 client whose identity our peer does not know (OpenSSL peer: handshake_failure).
_HANDSHAKE_FAILURE = "SSLV3_ALERT_HANDSHAKE_FAILURE"


def describe_psk_failure(exc: BaseException) -> str:
    """:func:`~chardev_bridge.tls.errors.describe_tls_error` plus what it means with PSK.

    A wrong key never says so on the wire: the peer fails to decrypt or closes. This names
    the likely cause, so that the log line of a PSK session says what to check.
    """
    cause = root_cause(exc)
    # Python 3.11's table of OpenSSL reason names lacks some PSK ones (unknown_psk_identity
    # comes as "[SSL] tlsv1 alert unknown psk identity"), so match the text too.
    code = ""
    if isinstance(cause, ssl.SSLError):
        code = f"{cause.reason or ''} {cause}".upper().replace(" ", "_")
    for reason, words in _UNKNOWN_IDENTITY.items():
        if reason in code:
            return words
    words = describe_tls_error(exc)
    if isinstance(cause, ssl.SSLEOFError) or any(reason in code for reason in _KEY_MISMATCH):
        return f"{words}: probably not the same PSK key on both sides (compare keys.psk)"
    if _HANDSHAKE_FAILURE in code:
        return f"{words}: the peer may not know our PSK identity"
    return words
