"""gnutls priority strings (QEMU's ``priority=``) mapped onto Python ``ssl``/OpenSSL settings.

QEMU users write gnutls priority strings; the bridge speaks OpenSSL. :func:`parse_priority`
reads the strings people actually use and computes what gnutls 3.7 would allow (versions,
ciphers, MACs, key exchanges, groups), then expresses that as OpenSSL settings
(:class:`TlsPriority`), which :func:`apply_priority` puts on an :class:`ssl.SSLContext`. Anything
that cannot be expressed is a :class:`PriorityError` naming the token, at start-up, never a
per-connection surprise.

Mapping (sets measured with ``gnutls-cli --priority X --list``, gnutls 3.7.9):

==========================  =====================================================================
gnutls                      OpenSSL / Python ``ssl``
==========================  =====================================================================
(no string)                 TLS 1.2 minimum, OpenSSL's own (system) cipher list
``NORMAL``                  TLS 1.2-1.3; TLS 1.2 suites: ECDHE-ECDSA, ECDHE-RSA, RSA, DHE-RSA
                            x AES-256/128-GCM, CHACHA20-POLY1305, AES-256/128-CCM,
                            AES-256/128-CBC-SHA1, in gnutls's order (``set_ciphers``)
``SECURE128`` (``SECURE``)  as NORMAL (same suites, CBC before CCM)
``SECURE192``/``SECURE256`` TLS 1.2 suites AES-256-GCM, CHACHA20-POLY1305, AES-256-CCM only;
                            ECDH group secp384r1 only (``set_ecdh_curve``); ``@SECLEVEL=4``:
                            192-bit keys, as gnutls (it refuses P-256 and RSA-2048 certificates
                            under SECURE192, so use ``creds init --key-type ecdsa-p384``); the
                            level also drops RSA key exchange, which gnutls keeps; TLS 1.3: below
``PFS``                     as NORMAL without RSA key exchange
``PERFORMANCE``             as NORMAL, 128-bit ciphers and RSA key exchange first
``NONE``                    nothing; build it up with ``+`` tokens
``@KEY1,KEY2``              first of KEY1, KEY2 defined in the gnutls config file
                            (``[priorities]`` or global section), parsed recursively
``@SYSTEM`` (undefined)     the host's OpenSSL defaults (OpenSSL follows the crypto policy on
                            Fedora/RHEL), TLS 1.2 minimum. gnutls itself rejects it then.
``-VERS-TLS1.2`` etc.       ``minimum_version``/``maximum_version`` (``VERS-ALL``,
                            ``VERS-TLS-ALL`` too); DTLS tokens are ignored
TLS 1.0/1.1                 never enabled: silently dropped from NORMAL & co, an error when
                            added with ``+`` (OpenSSL's security level 2 refuses them anyway)
``-AES-128-CBC``,           edit the TLS 1.2 suite list (and the allowed TLS 1.3 suites); also
``+SHA256``, ``-RSA`` ...   ``CIPHER-ALL``, ``MAC-ALL``, ``KX-ALL``; ``+`` appends, ``-``/``!``
                            remove, like gnutls. SHA256/SHA384 add the CBC-SHA256/384 suites
``GROUP-...``               the first EC group left (SECP256R1/384R1/521R1) becomes the only
                            ECDH curve; X25519/X448/FFDHE first is an error
``%SERVER_PRECEDENCE``      accepted: the bridge always prefers its own order as a server
``%COMPAT``,                accepted, no effect (OpenSSL's workarounds are always on; there is
``-COMP-ALL:+COMP-NULL``    no compression)
``%NO_TICKETS``             ``ssl.OP_NO_TICKET``
anything else               :class:`PriorityError` (CAMELLIA, 3DES, ARCFOUR, ``SIGN-...``,
                            ``%PROFILE_...``, ``+VERS-TLS1.0``, ...)
==========================  =====================================================================

TLS 1.3 cipher suites cannot be restricted: Python 3.11's ``ssl`` has no ``set_ciphersuites``,
so OpenSSL offers its defaults (AES-256-GCM, CHACHA20-POLY1305, AES-128-GCM) whatever the
string says, and never AES-128-CCM. For ``SECURE192``/``SECURE256`` this means a TLS 1.3 peer
that insists on TLS_AES_128_GCM_SHA256 gets it; as a server the bridge prefers its own order, so
a peer that offers AES-256-GCM (every gnutls and OpenSSL default does) gets AES-256-GCM.
:attr:`TlsPriority.tls13_unenforced` lists the suites concerned and :func:`check_negotiated`
finds such a session after the handshake, so the bridge can close it with a clear message.
Add ``:-VERS-TLS1.3`` to get a fully enforced TLS 1.2 suite list instead.

Without ``--tls-priority``, :func:`resolve_priority` looks for an application entry first, as
libvirt and QEMU do with ``@LIBVIRT,SYSTEM`` / ``@QEMU,SYSTEM``: the keyword
``CHARDEV_BRIDGE`` in ``/etc/crypto-policies/local.d/gnutls-chardev-bridge.config``, then in the
gnutls system config (``$GNUTLS_SYSTEM_PRIORITY_FILE``, ``/etc/gnutls/config``,
``/etc/crypto-policies/back-ends/gnutls.config``, which ``update-crypto-policies`` builds from
``local.d``). A file holds lines like ``CHARDEV_BRIDGE = SECURE192:-VERS-TLS1.2``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

APP_KEYWORD = "CHARDEV_BRIDGE"
LOCAL_POLICY_FILE = Path("/etc/crypto-policies/local.d/gnutls-chardev-bridge.config")
SYSTEM_CONFIG_FILES = (
    Path("/etc/gnutls/config"),
    Path("/etc/crypto-policies/back-ends/gnutls.config"),
)

TLS12 = "TLS1.2"
TLS13 = "TLS1.3"
_VERSIONS = ("TLS1.3", "TLS1.2", "TLS1.1", "TLS1.0")
_LEGACY_VERSIONS = {"TLS1.1", "TLS1.0", "SSL3.0"}
_DTLS_VERSIONS = {"DTLS1.2", "DTLS1.0", "DTLS0.9"}

_CIPHERS = (
    "AES-256-GCM",
    "CHACHA20-POLY1305",
    "AES-256-CCM",
    "AES-256-CBC",
    "AES-128-GCM",
    "AES-128-CCM",
    "AES-128-CBC",
)
_MACS = ("SHA1", "AEAD", "SHA256", "SHA384")
_KXS = ("ECDHE-ECDSA", "ECDHE-RSA", "RSA", "DHE-RSA")
_GROUPS = (
    "SECP256R1",
    "SECP384R1",
    "SECP521R1",
    "X25519",
    "X448",
    "FFDHE2048",
    "FFDHE3072",
    "FFDHE4096",
    "FFDHE6144",
    "FFDHE8192",
)
# gnutls group name -> the OpenSSL curve name Python's set_ecdh_curve() accepts.
_EC_CURVES = {"SECP256R1": "prime256v1", "SECP384R1": "secp384r1", "SECP521R1": "secp521r1"}

# TLS 1.2 suites gnutls and OpenSSL both have: (kx, cipher, mac) -> (OpenSSL name, IANA code).
TLS12_SUITES: dict[tuple[str, str, str], tuple[str, int]] = {
    ("ECDHE-ECDSA", "AES-256-GCM", "AEAD"): ("ECDHE-ECDSA-AES256-GCM-SHA384", 0xC02C),
    ("ECDHE-ECDSA", "CHACHA20-POLY1305", "AEAD"): ("ECDHE-ECDSA-CHACHA20-POLY1305", 0xCCA9),
    ("ECDHE-ECDSA", "AES-256-CCM", "AEAD"): ("ECDHE-ECDSA-AES256-CCM", 0xC0AD),
    ("ECDHE-ECDSA", "AES-256-CBC", "SHA1"): ("ECDHE-ECDSA-AES256-SHA", 0xC00A),
    ("ECDHE-ECDSA", "AES-256-CBC", "SHA384"): ("ECDHE-ECDSA-AES256-SHA384", 0xC024),
    ("ECDHE-ECDSA", "AES-128-GCM", "AEAD"): ("ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02B),
    ("ECDHE-ECDSA", "AES-128-CCM", "AEAD"): ("ECDHE-ECDSA-AES128-CCM", 0xC0AC),
    ("ECDHE-ECDSA", "AES-128-CBC", "SHA1"): ("ECDHE-ECDSA-AES128-SHA", 0xC009),
    ("ECDHE-ECDSA", "AES-128-CBC", "SHA256"): ("ECDHE-ECDSA-AES128-SHA256", 0xC023),
    ("ECDHE-RSA", "AES-256-GCM", "AEAD"): ("ECDHE-RSA-AES256-GCM-SHA384", 0xC030),
    ("ECDHE-RSA", "CHACHA20-POLY1305", "AEAD"): ("ECDHE-RSA-CHACHA20-POLY1305", 0xCCA8),
    ("ECDHE-RSA", "AES-256-CBC", "SHA1"): ("ECDHE-RSA-AES256-SHA", 0xC014),
    ("ECDHE-RSA", "AES-256-CBC", "SHA384"): ("ECDHE-RSA-AES256-SHA384", 0xC028),
    ("ECDHE-RSA", "AES-128-GCM", "AEAD"): ("ECDHE-RSA-AES128-GCM-SHA256", 0xC02F),
    ("ECDHE-RSA", "AES-128-CBC", "SHA1"): ("ECDHE-RSA-AES128-SHA", 0xC013),
    ("ECDHE-RSA", "AES-128-CBC", "SHA256"): ("ECDHE-RSA-AES128-SHA256", 0xC027),
    ("RSA", "AES-256-GCM", "AEAD"): ("AES256-GCM-SHA384", 0x009D),
    ("RSA", "AES-256-CCM", "AEAD"): ("AES256-CCM", 0xC09D),
    ("RSA", "AES-256-CBC", "SHA1"): ("AES256-SHA", 0x0035),
    ("RSA", "AES-256-CBC", "SHA256"): ("AES256-SHA256", 0x003D),
    ("RSA", "AES-128-GCM", "AEAD"): ("AES128-GCM-SHA256", 0x009C),
    ("RSA", "AES-128-CCM", "AEAD"): ("AES128-CCM", 0xC09C),
    ("RSA", "AES-128-CBC", "SHA1"): ("AES128-SHA", 0x002F),
    ("RSA", "AES-128-CBC", "SHA256"): ("AES128-SHA256", 0x003C),
    ("DHE-RSA", "AES-256-GCM", "AEAD"): ("DHE-RSA-AES256-GCM-SHA384", 0x009F),
    ("DHE-RSA", "CHACHA20-POLY1305", "AEAD"): ("DHE-RSA-CHACHA20-POLY1305", 0xCCAA),
    ("DHE-RSA", "AES-256-CCM", "AEAD"): ("DHE-RSA-AES256-CCM", 0xC09F),
    ("DHE-RSA", "AES-256-CBC", "SHA1"): ("DHE-RSA-AES256-SHA", 0x0039),
    ("DHE-RSA", "AES-256-CBC", "SHA256"): ("DHE-RSA-AES256-SHA256", 0x006B),
    ("DHE-RSA", "AES-128-GCM", "AEAD"): ("DHE-RSA-AES128-GCM-SHA256", 0x009E),
    ("DHE-RSA", "AES-128-CCM", "AEAD"): ("DHE-RSA-AES128-CCM", 0xC09E),
    ("DHE-RSA", "AES-128-CBC", "SHA1"): ("DHE-RSA-AES128-SHA", 0x0033),
    ("DHE-RSA", "AES-128-CBC", "SHA256"): ("DHE-RSA-AES128-SHA256", 0x0067),
}
# TLS 1.3 suites by the gnutls cipher that enables them (gnutls lists them in cipher order).
TLS13_SUITES = {
    "AES-256-GCM": "TLS_AES_256_GCM_SHA384",
    "CHACHA20-POLY1305": "TLS_CHACHA20_POLY1305_SHA256",
    "AES-128-GCM": "TLS_AES_128_GCM_SHA256",
    "AES-128-CCM": "TLS_AES_128_CCM_SHA256",
}
# What OpenSSL 3 offers for TLS 1.3 when nobody calls SSL_CTX_set_ciphersuites().
OPENSSL_TLS13_DEFAULT = frozenset(
    {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"}
)
_TLS13_128_BIT = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_128_CCM_SHA256"})
_SSL_VERSIONS = {TLS12: ssl.TLSVersion.TLSv1_2, TLS13: ssl.TLSVersion.TLSv1_3}


class PriorityError(ValueError):
    """A priority string (or policy file) that cannot be mapped; ``token`` is the culprit."""

    def __init__(self, message: str, token: str | None = None):
        super().__init__(message)
        self.token = token


@dataclass
class _State:
    """gnutls's view while a string is parsed: ordered algorithm lists."""

    versions: list[str]
    ciphers: list[str] | None  # None: the host's OpenSSL defaults (undefined @SYSTEM)
    macs: list[str]
    kxs: list[str]
    groups: list[str]
    no_tickets: bool = False
    security_level: int | None = None
    notes: list[str] = field(default_factory=list)


_SECURE_CIPHERS = [
    "AES-256-GCM",
    "CHACHA20-POLY1305",
    "AES-256-CBC",
    "AES-256-CCM",
    "AES-128-GCM",
    "AES-128-CBC",
    "AES-128-CCM",
]
_BASES: dict[str, Callable[[], _State]] = {
    "NORMAL": lambda: _State(
        list(_VERSIONS), list(_CIPHERS), ["SHA1", "AEAD"], list(_KXS), list(_GROUPS)
    ),
    "SECURE128": lambda: _State(
        list(_VERSIONS), list(_SECURE_CIPHERS), ["SHA1", "AEAD"], list(_KXS), list(_GROUPS)
    ),
    "SECURE192": lambda: _State(
        list(_VERSIONS),
        _SECURE_CIPHERS[:4],
        ["AEAD"],
        list(_KXS),
        ["SECP384R1", "SECP521R1", "FFDHE8192"],
        security_level=4,
    ),
    "PFS": lambda: _State(
        list(_VERSIONS),
        list(_CIPHERS),
        ["SHA1", "AEAD"],
        ["ECDHE-ECDSA", "ECDHE-RSA", "DHE-RSA"],
        list(_GROUPS),
    ),
    "PERFORMANCE": lambda: _State(
        list(_VERSIONS),
        [
            "AES-128-GCM",
            "AES-256-GCM",
            "CHACHA20-POLY1305",
            "AES-128-CCM",
            "AES-256-CCM",
            "AES-128-CBC",
            "AES-256-CBC",
        ],
        ["SHA1", "AEAD"],
        ["RSA", "ECDHE-ECDSA", "ECDHE-RSA", "DHE-RSA"],
        list(_GROUPS),
    ),
    "NONE": lambda: _State([], [], [], [], []),
}
_BASES["SECURE"] = _BASES["SECURE128"]
_BASES["SECURE256"] = _BASES["SECURE192"]  # an alias in gnutls 3.7 too


@dataclass(frozen=True)
class TlsPriority:
    """OpenSSL settings equivalent to a gnutls priority string (see the module table)."""

    text: str
    minimum_version: ssl.TLSVersion
    maximum_version: ssl.TLSVersion
    # For SSLContext.set_ciphers(); None leaves OpenSSL's default list.
    tls12_ciphers: str | None = None
    # TLS 1.3 suites the gnutls string allows; None means any.
    tls13_allowed: frozenset[str] | None = None
    ecdh_curve: str | None = None
    # OpenSSL @SECLEVEL; None keeps the host's (2 on Debian: 112-bit keys).
    security_level: int | None = None
    no_tickets: bool = False
    notes: tuple[str, ...] = ()

    @property
    def tls13_unenforced(self) -> frozenset[str]:
        """TLS 1.3 suites OpenSSL may negotiate although the string does not allow them."""
        if self.maximum_version < ssl.TLSVersion.TLSv1_3 or self.tls13_allowed is None:
            return frozenset()
        possible = OPENSSL_TLS13_DEFAULT
        if (self.security_level or 0) >= 4:
            # Level 4 means 192-bit security: OpenSSL refuses the 128-bit suites itself.
            possible -= _TLS13_128_BIT
        return possible - self.tls13_allowed

    def describe(self) -> str:
        """One line for the start-up log."""
        names = {ssl.TLSVersion.TLSv1_2: "1.2", ssl.TLSVersion.TLSv1_3: "1.3"}
        lo, hi = names[self.minimum_version], names[self.maximum_version]
        parts = [f"TLS {lo}" if lo == hi else f"TLS {lo}-{hi}"]
        if self.tls12_ciphers is not None and self.minimum_version <= ssl.TLSVersion.TLSv1_2:
            parts.append(f"{self.tls12_ciphers.count(':') + 1} TLS 1.2 suites")
        if self.ecdh_curve:
            parts.append(f"ECDH {self.ecdh_curve}")
        if self.security_level is not None:
            parts.append(f"OpenSSL security level {self.security_level}")
        return f"{self.text!r}: " + ", ".join(parts)


DEFAULT_PRIORITY = TlsPriority(
    "(default)", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, notes=("OpenSSL's cipher list",)
)


def _edit(items: list[str], sign: str, names: Sequence[str]) -> None:
    if sign == "+":
        for name in names:
            if name not in items:
                items.append(name)  # gnutls appends: an added algorithm comes last
    else:
        for name in names:
            if name in items:
                items.remove(name)


def _apply_token(state: _State, token: str) -> None:
    if token.startswith("%"):
        flag = token[1:]
        if flag == "NO_TICKETS":
            state.no_tickets = True
        elif flag not in ("SERVER_PRECEDENCE", "COMPAT"):
            raise PriorityError(f"priority flag {token!r} cannot be mapped onto OpenSSL", token)
        return
    if not token or token[0] not in "+-!":
        raise PriorityError(
            f"priority token {token!r} must start with +, - or ! (or be the first keyword)", token
        )
    sign, name = ("-" if token[0] == "!" else token[0]), token[1:]
    if name.startswith("VERS-"):
        _edit_versions(state, token, sign, name[5:])
    elif name in ("CIPHER-ALL", *_CIPHERS):
        if state.ciphers is None:
            raise PriorityError(
                f"{token!r} needs a base keyword with known ciphers (e.g. NORMAL); "
                "@SYSTEM here means OpenSSL's own list",
                token,
            )
        _edit(state.ciphers, sign, _CIPHERS if name == "CIPHER-ALL" else [name])
    elif name in ("MAC-ALL", *_MACS):
        # gnutls's MAC-ALL is the default set; SHA256/SHA384 must be named.
        _edit(state.macs, sign, ["SHA1", "AEAD"] if name == "MAC-ALL" else [name])
    elif name in ("KX-ALL", *_KXS):
        _edit(state.kxs, sign, _KXS if name == "KX-ALL" else [name])
    elif name.startswith("GROUP-"):
        group = name[6:]
        if group != "ALL" and group not in _GROUPS:
            raise PriorityError(f"unknown or unsupported group in {token!r}", token)
        _edit(state.groups, sign, _GROUPS if group == "ALL" else [group])
    elif name in ("COMP-ALL", "COMP-NULL"):
        pass  # neither side compresses
    else:
        raise PriorityError(f"priority token {token!r} cannot be mapped onto OpenSSL", token)


def _edit_versions(state: _State, token: str, sign: str, version: str) -> None:
    if version in ("ALL", "TLS-ALL"):
        _edit(state.versions, sign, _VERSIONS)
    elif version in _DTLS_VERSIONS:
        pass  # datagram TLS does not apply to a stream
    elif version in _LEGACY_VERSIONS:
        if sign == "+":
            raise PriorityError(
                f"{token!r}: TLS 1.1 and older are not supported (TLS 1.2 is the minimum)", token
            )
        _edit(state.versions, sign, [version])
    elif version in (TLS12, TLS13):
        _edit(state.versions, sign, [version])
    else:
        raise PriorityError(f"unknown protocol version in {token!r}", token)


def read_priority_keywords(path: str | os.PathLike[str]) -> dict[str, str]:
    """Priority keywords defined in a gnutls config file (``KEY = STRING`` lines).

    gnutls reads them from the file's global part and its ``[priorities]`` section; other
    sections (``[overrides]`` ...) are skipped. ``#`` starts a comment. A missing file gives {}.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise PriorityError(f"cannot read {os.fspath(path)}: {exc}") from None
    keywords: dict[str, str] = {}
    section = "global"
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif "=" in line and section in ("global", "priorities"):
            key, value = (part.strip() for part in line.split("=", 1))
            keywords[key] = value
    return keywords


def system_config_files() -> list[Path]:
    """The gnutls system config file(s): ``$GNUTLS_SYSTEM_PRIORITY_FILE`` or the usual paths."""
    override = os.environ.get("GNUTLS_SYSTEM_PRIORITY_FILE")
    return [Path(override)] if override else list(SYSTEM_CONFIG_FILES)


def system_keywords() -> dict[str, str]:
    """Keywords from the host's gnutls config files (the first definition wins)."""
    merged: dict[str, str] = {}
    for path in system_config_files():
        for key, value in read_priority_keywords(path).items():
            merged.setdefault(key, value)
    return merged


def _base_state(keyword: str, keywords: Mapping[str, str] | None, depth: int) -> _State:
    if not keyword.startswith("@"):
        if keyword not in _BASES:
            raise PriorityError(
                f"priority keyword {keyword!r} cannot be mapped onto OpenSSL (known: "
                "NORMAL, SECURE128, SECURE192, SECURE256, PFS, PERFORMANCE, NONE, @KEYWORD)",
                keyword,
            )
        return _BASES[keyword]()
    names = keyword[1:].split(",")
    table = system_keywords() if keywords is None else keywords
    for name in names:
        if name in table:
            if depth > 4:
                raise PriorityError(f"{keyword!r}: priority keywords refer to each other", keyword)
            return _parse_state(table[name], keywords, depth + 1)
    if "SYSTEM" in names:
        state = _State([TLS13, TLS12], None, [], [], list(_GROUPS))
        state.notes.append("@SYSTEM is not defined for gnutls here: OpenSSL's system defaults")
        return state
    # A name with a control character is quoted, so the error stays one line.
    shown = ", ".join(name if name.isprintable() else repr(name) for name in names)
    raise PriorityError(
        f"{keyword!r}: none of {shown} is defined in the gnutls config "
        f"({', '.join(map(str, system_config_files()))})",
        keyword,
    )


def _parse_state(text: str, keywords: Mapping[str, str] | None, depth: int = 0) -> _State:
    tokens = [t.strip() for t in text.strip().split(":")]
    if not tokens[0]:
        raise PriorityError("empty priority string", "")
    state = _base_state(tokens[0], keywords, depth)
    for token in tokens[1:]:
        _apply_token(state, token)
    return state


def _tls12_suites(state: _State) -> list[tuple[str, int]]:
    assert state.ciphers is not None
    # gnutls orders TLS 1.2 suites by key exchange, then cipher, then MAC preference.
    return [
        TLS12_SUITES[(kx, cipher, mac)]
        for kx in state.kxs
        for cipher in state.ciphers
        for mac in state.macs
        if (kx, cipher, mac) in TLS12_SUITES
    ]


def parse_priority(text: str, *, keywords: Mapping[str, str] | None = None) -> TlsPriority:
    """Map a gnutls priority string onto OpenSSL settings (see the module table).

    ``keywords`` resolves ``@KEYWORD`` references; by default the host's gnutls config files.
    Raises :class:`PriorityError` (a ValueError) naming the first token that cannot be mapped
    or a result that allows no connection at all.
    """
    state = _parse_state(text, keywords)
    versions = [v for v in state.versions if v in (TLS12, TLS13)]
    tls13_allowed: frozenset[str] | None = None
    tls12_ciphers: str | None = None
    notes = list(state.notes)
    if state.ciphers is not None:
        suites = _tls12_suites(state)
        if suites:
            tls12_ciphers = ":".join(name for name, _ in suites)
        elif TLS12 in versions:
            versions.remove(TLS12)  # gnutls could not negotiate TLS 1.2 either
            notes.append("no TLS 1.2 cipher suite is left, so TLS 1.2 is off")
        tls13_allowed = frozenset(TLS13_SUITES[c] for c in state.ciphers if c in TLS13_SUITES)
        if TLS13 in versions and not tls13_allowed & OPENSSL_TLS13_DEFAULT:
            raise PriorityError(
                f"{text!r} leaves no TLS 1.3 cipher suite OpenSSL offers; add :-VERS-TLS1.3",
                text,
            )
    if not versions:
        raise PriorityError(f"{text!r} leaves no usable protocol version (TLS 1.2 or 1.3)", text)
    ecdh_curve = _ecdh_curve(state.groups)
    prio = TlsPriority(
        text=text,
        minimum_version=_SSL_VERSIONS[TLS12 if TLS12 in versions else TLS13],
        maximum_version=_SSL_VERSIONS[TLS13 if TLS13 in versions else TLS12],
        tls12_ciphers=tls12_ciphers,
        tls13_allowed=tls13_allowed,
        ecdh_curve=ecdh_curve,
        security_level=state.security_level,
        no_tickets=state.no_tickets,
    )
    if prio.tls13_unenforced:
        notes.append(
            "TLS 1.3 suites cannot be restricted with Python's ssl; not allowed but possible: "
            + ", ".join(sorted(prio.tls13_unenforced))
        )
    return replace(prio, notes=tuple(notes))


def _ecdh_curve(groups: list[str]) -> str | None:
    if groups == list(_GROUPS):
        return None  # everything gnutls knows: leave OpenSSL's default group list
    for group in groups:
        if group in _EC_CURVES:
            return _EC_CURVES[group]
        if group in ("X25519", "X448"):
            raise PriorityError(
                f"GROUP-{group} as the preferred group cannot be mapped: Python's ssl can "
                "restrict key exchange to one of SECP256R1, SECP384R1, SECP521R1 only",
                f"GROUP-{group}",
            )
    raise PriorityError(
        "the priority string leaves no elliptic-curve group (finite-field DH only cannot be "
        "mapped onto OpenSSL)",
        "GROUP-ALL",
    )


def apply_priority(ctx: ssl.SSLContext, prio: TlsPriority) -> None:
    """Put the settings of ``prio`` on ``ctx`` (client or server context).

    Call it before ``load_cert_chain``: then a key too weak for the security level (a P-256
    key under SECURE192) is refused at start (``EE_KEY_TOO_SMALL``) instead of failing every
    handshake later.
    """
    ctx.minimum_version = prio.minimum_version
    ctx.maximum_version = prio.maximum_version
    ciphers = prio.tls12_ciphers
    if prio.security_level is not None:
        ciphers = f"{ciphers or 'DEFAULT'}:@SECLEVEL={prio.security_level}"
    try:
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        if prio.ecdh_curve is not None:
            ctx.set_ecdh_curve(prio.ecdh_curve)
    except (ssl.SSLError, ValueError) as exc:
        raise PriorityError(f"OpenSSL refused the settings for {prio.text!r}: {exc}") from None
    if prio.no_tickets:
        ctx.options |= ssl.OP_NO_TICKET
    # Prefer our order as a server: with TLS 1.3 suites unrestricted, this is what keeps a
    # SECURE256 server on AES-256-GCM when the client offers it.
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE


def check_negotiated(prio: TlsPriority, version: str | None, cipher: str | None) -> str | None:
    """After a handshake: why the session breaks the policy, or None when it complies.

    ``version`` and ``cipher`` are ``SSLObject.version()`` and ``SSLObject.cipher()[0]``. Only
    TLS 1.3 can break it (see the module docstring); TLS 1.2 is enforced by OpenSSL.
    """
    allowed = prio.tls13_allowed
    if (
        version == "TLSv1.3"
        and allowed is not None
        and cipher is not None
        and cipher not in allowed
    ):
        return (
            f"the peer negotiated {cipher} over TLS 1.3, which the priority string "
            f"{prio.text!r} does not allow"
        )
    return None


@dataclass(frozen=True)
class PrioritySource:
    """The priority in force and where it came from (for the start-up log)."""

    priority: TlsPriority
    source: str


def resolve_priority(
    explicit: str | None,
    *,
    local_file: str | os.PathLike[str] = LOCAL_POLICY_FILE,
    system_files: Sequence[str | os.PathLike[str]] | None = None,
) -> PrioritySource:
    """Pick the priority: ``--tls-priority``, else a ``CHARDEV_BRIDGE`` entry, else the default.

    The entry is looked up in ``local_file`` first, then in the gnutls system config files
    (``system_files``, default :func:`system_config_files`). ``@KEYWORD`` references inside any
    string resolve against the same files.
    """
    files = [
        Path(local_file),
        *(map(Path, system_files) if system_files is not None else system_config_files()),
    ]
    tables = [(path, read_priority_keywords(path)) for path in files]
    merged: dict[str, str] = {}
    for _, table in tables:
        for key, value in table.items():
            merged.setdefault(key, value)
    if explicit is not None:
        return PrioritySource(parse_priority(explicit, keywords=merged), "--tls-priority")
    for path, table in tables:
        if APP_KEYWORD in table:
            try:
                prio = parse_priority(table[APP_KEYWORD], keywords=merged)
            except PriorityError as exc:
                raise PriorityError(f"{path} ({APP_KEYWORD}): {exc}", exc.token) from None
            return PrioritySource(prio, f"{path} ({APP_KEYWORD})")
    return PrioritySource(DEFAULT_PRIORITY, "built-in default (TLS 1.2 minimum, OpenSSL ciphers)")
