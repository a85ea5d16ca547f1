"""QEMU-style credentials, priority and allow-list settings → the TLS set-up remote links use."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from chardev_bridge.qemu._isolated import ChildCheck
from chardev_bridge.qemu.credfiles import (
    CredentialError,
    has_errors,
    is_init_root,
    read_key_password,
    role_mismatch,
)
from chardev_bridge.qemu.policy import (
    TLSPolicy,
    check_peer,
    load_crl,
    load_x509_creds,
    make_ssl_context,
    server_hostname_for,
)
from chardev_bridge.qemu.priority import DEFAULT_PRIORITY, resolve_priority
from chardev_bridge.qemu.settings import TLSSettings
from chardev_bridge.tls.errors import describe_quick_rejection
from chardev_bridge.tls.setup import PeerCert, TLSSetup
from chardev_bridge.tls.stream import TLSSessionInfo

if TYPE_CHECKING:
    from chardev_bridge.qemu.authz import AuthzList

log = logging.getLogger("chardev_bridge")


def build_tls_setup(cfg: TLSSettings, started: ChildCheck | None = None) -> TLSSetup | None:
    """The TLS configuration for ``cfg``, after QEMU's load-time checks of the credentials
    (``started``: those checks, running since
    :func:`~chardev_bridge.qemu._isolated.start_checks`).

    Raises ``CredentialError`` (every error QEMU would report, one per line) or
    ``PriorityError``/``AuthzFileError`` (ValueError) for a bad priority or allow-list.
    """
    if cfg.creds_psk is not None:
        return _build_psk_setup(cfg)
    if cfg.creds is None:
        return None
    check_layout(cfg.creds, cfg)
    password = read_key_password(cfg.key_password_file) if cfg.key_password_file else None
    if started is None or started.checks != (cfg.creds, cfg.endpoint, password):
        if started is not None:
            started.result()  # checks of other files: only reap their child
        # In a child: the checks load cryptography's backend, which a bridge needs no more.
        started = ChildCheck(cfg.creds, cfg.endpoint, password=password)
    checked = started.result()
    for finding in checked.findings:
        if finding.level == "warning":
            log.warning("%s", finding.message)
    if has_errors(checked.findings):
        errors = [f.message for f in checked.findings if f.level == "error"]
        raise CredentialError("\n".join(errors))
    chosen = resolve_priority(cfg.priority)
    # The default at every start is noise; a priority someone chose is worth a line.
    level = logging.DEBUG if chosen.priority is DEFAULT_PRIORITY else logging.INFO
    log.log(level, "TLS priority %s, from %s", chosen.priority.text, chosen.source)
    authz = _build_authz(cfg)
    policy = TLSPolicy(
        creds=load_x509_creds(cfg.creds, cfg.endpoint),
        verify_peer=cfg.verify_peer,
        hostname=cfg.hostname,
        key_password=password,
        authz=authz,
        priority=chosen.priority,
    )
    crl = load_crl(policy.creds) if policy.endpoint == "server" else None

    def judge(info: TLSSessionInfo) -> PeerCert | None:
        return check_peer(
            policy, crl, cert_der=info.peer_cert_der, version=info.version, cipher=info.cipher
        )

    return TLSSetup(
        context=make_ssl_context(policy),
        server_side=policy.endpoint == "server",
        server_hostname=server_hostname_for(policy, cfg.connect_host),
        check_peer=judge,
        silent_rejection=_silent_rejection(policy) if policy.endpoint == "client" else None,
        split_last_byte=cfg.split_last_byte,
        cert_not_after=checked.cert_not_after,
    )


#: A TLS setup built from credential files, and those files' fingerprint.
PreparedTLS = tuple[TLSSetup | None, tuple[object, ...]]

#: Setups already built, by settings and fingerprint: many bridges share one directory.
SetupCache = dict[tuple[TLSSettings, tuple[object, ...]], TLSSetup | None]


class ReloadableTLS:
    """A TLS provider whose credentials are read again on reload: new handshakes use the
    new files, sessions in progress keep theirs. Files that did not change are not read."""

    def __init__(
        self,
        settings: TLSSettings,
        cache: SetupCache | None = None,
        started: ChildCheck | None = None,
    ) -> None:
        self.settings = settings
        self.setup: TLSSetup | None = None
        self._fingerprint: tuple[object, ...] | None = None
        self.setup, self._fingerprint = self.prepare(cache, started)

    def __call__(self) -> TLSSetup | None:
        return self.setup

    def prepare(
        self, cache: SetupCache | None = None, started: ChildCheck | None = None
    ) -> PreparedTLS:
        """Build the setup from the files as they are now (raises as
        :func:`build_tls_setup`, which collects ``started``); :meth:`install` puts it to
        use."""
        fingerprint = credentials_fingerprint(self.settings)
        if fingerprint == self._fingerprint:
            return self.setup, fingerprint
        key = (self.settings, fingerprint)
        if cache is not None and key in cache:
            return cache[key], fingerprint
        setup = build_tls_setup(self.settings, started)
        if cache is not None:
            cache[key] = setup
        return setup, fingerprint

    def install(self, prepared: PreparedTLS) -> bool:
        """Use a setup :meth:`prepare` built; returns whether the files had changed."""
        setup, fingerprint = prepared
        changed = fingerprint != self._fingerprint
        self.setup, self._fingerprint = setup, fingerprint
        return changed


def credentials_fingerprint(cfg: TLSSettings) -> tuple[object, ...]:
    """What changes when a credential file is replaced, renewed or edited: each file's
    identity, size and modification time."""
    paths: list[Path] = []
    for directory in (cfg.creds, cfg.creds_psk):
        if directory is not None and directory.is_dir():
            paths += sorted(directory.iterdir())
    for extra in (cfg.key_password_file, cfg.authz_file):
        if extra is not None:
            paths.append(extra)
    marks: list[object] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            marks.append((str(path), None))
            continue
        marks.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(marks)


def _silent_rejection(policy: TLSPolicy) -> str:
    """What a server that closed right after the handshake probably rejected: our client
    certificate, or the lack of one (the credentials decide which we sent)."""
    creds = policy.creds
    cert = str(creds.cert) if creds.cert is not None and creds.key is not None else None
    return describe_quick_rejection(cert, str(creds.directory))


def check_layout(directory: Path, cfg: TLSSettings) -> None:
    """Refuse, in one line naming the fix, a ``--tls-creds`` directory that is the wrong
    one for the bridge's TLS role: a ``creds init`` root, or the other role's credentials.

    Done before anything connects: a client given server credentials would otherwise send
    no certificate and only learn from the server's silent close that it was refused.
    """
    endpoint = cfg.endpoint
    role = f"the TLS {endpoint} ({cfg.role_source})"
    if not directory.is_dir():
        # One line for the directory, not one per file QEMU would have looked for.
        raise CredentialError(f"--tls-creds {directory}: no such directory")
    if (directory / "ca-key.pem").exists() and is_init_root(directory.parent):
        raise CredentialError(
            f"--tls-creds {directory} is the CA directory `creds init` made (it holds the CA's"
            f" private key; keep it off the bridge): as {role} this bridge needs --tls-creds"
            f" {directory.parent / endpoint}"
        )
    if is_init_root(directory):
        raise CredentialError(
            f"--tls-creds {directory} is the root that `creds init` made, not a credentials"
            f" directory: as {role} this bridge needs --tls-creds {directory / endpoint}"
        )
    mismatch = role_mismatch(directory, endpoint)
    if mismatch is None:
        return
    other = "client" if endpoint == "server" else "server"
    sibling = directory.parent / endpoint
    suggest = f" (--tls-creds {sibling})" if sibling != directory and sibling.is_dir() else ""
    raise CredentialError(
        f"--tls-creds {mismatch}; this bridge is {role}: give it {endpoint} credentials"
        f"{suggest}, or make it the TLS {other} with --tls-endpoint {other}"
    )


def _build_authz(cfg: TLSSettings) -> AuthzList | None:
    from chardev_bridge.qemu.authz import AuthzList, load_authz_file  # only where one is set

    if cfg.authz_file is not None:
        return load_authz_file(cfg.authz_file)
    if cfg.authz:
        return AuthzList.from_patterns(cfg.authz)
    return None


def _build_psk_setup(cfg: TLSSettings) -> TLSSetup:
    assert cfg.creds_psk is not None
    # Imported here: only PSK users pay for it (importlib.metadata, sslpsk3) at start-up.
    from chardev_bridge.qemu.psk import build_psk_setup, check_psk_available

    route = check_psk_available()
    chosen = resolve_priority(cfg.priority)
    log.info("TLS-PSK via %s; TLS priority %s, from %s", route, chosen.priority.text, chosen.source)
    setup = build_psk_setup(
        cfg.creds_psk,
        endpoint=cfg.endpoint,
        username=cfg.username,
        priority=chosen.priority,
    )
    return replace(setup, split_last_byte=cfg.split_last_byte)
