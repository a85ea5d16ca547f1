"""Credentials, priority and allow-list options → the TLS set-up remote connections use."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from chardev_bridge.authz import AuthzList, load_authz_file
from chardev_bridge.config import BridgeConfig
from chardev_bridge.credcheck import check_creds, has_errors, is_init_root, role_mismatch
from chardev_bridge.priority import DEFAULT_PRIORITY, resolve_priority
from chardev_bridge.remote import TLSSetup
from chardev_bridge.tlspolicy import (
    CredentialError,
    TLSPolicy,
    load_crl,
    load_x509_creds,
    make_ssl_context,
    server_hostname_for,
)

log = logging.getLogger("chardev_bridge")


def build_tls_setup(cfg: BridgeConfig) -> TLSSetup | None:
    """The TLS configuration for ``cfg``, after QEMU's load-time checks of the credentials.

    Raises ``CredentialError`` (every error QEMU would report, one per line) or
    ``PriorityError``/``AuthzFileError`` (ValueError) for a bad priority or allow-list.
    """
    if cfg.tls_creds_psk is not None:
        return _build_psk_setup(cfg)
    if cfg.tls_creds is None:
        return None
    check_layout(cfg.tls_creds, cfg)
    password = _read_password(cfg.key_password_file) if cfg.key_password_file else None
    findings = check_creds(cfg.tls_creds, cfg.endpoint, password=password)
    for finding in findings:
        if finding.level == "warning":
            log.warning("%s", finding.message)
    if has_errors(findings):
        raise CredentialError("\n".join(f.message for f in findings if f.level == "error"))
    chosen = resolve_priority(cfg.tls_priority)
    # The default at every start is noise; a priority someone chose is worth a line.
    level = logging.DEBUG if chosen.priority is DEFAULT_PRIORITY else logging.INFO
    log.log(level, "TLS priority %s, from %s", chosen.priority.text, chosen.source)
    authz = _build_authz(cfg)
    policy = TLSPolicy(
        creds=load_x509_creds(cfg.tls_creds, cfg.endpoint),
        verify_peer=cfg.verify_peer,
        hostname=cfg.tls_hostname,
        key_password=password,
        authz=authz,
        priority=chosen.priority,
    )
    return TLSSetup(
        context=make_ssl_context(policy),
        server_side=policy.endpoint == "server",
        server_hostname=server_hostname_for(policy, cfg.host),
        policy=policy,
        crl=load_crl(policy.creds) if policy.endpoint == "server" else None,
        split_last_byte=cfg.qemu_stall_workaround,
    )


def check_layout(directory: Path, cfg: BridgeConfig) -> None:
    """Refuse, in one line naming the fix, a ``--tls-creds`` directory that is the wrong
    one for the bridge's TLS role: a ``creds init`` root, or the other role's credentials.

    Done before anything connects: a client given server credentials would otherwise send
    no certificate and only learn from the server's silent close that it was refused.
    """
    endpoint = cfg.endpoint
    role = f"the TLS {endpoint} ({_role_source(cfg)})"
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


def _role_source(cfg: BridgeConfig) -> str:
    """Which option made the TLS role what it is, for error messages."""
    if cfg.tls_endpoint is not None:
        return f"--tls-endpoint {cfg.tls_endpoint}"
    return "it listens: --server" if cfg.listen else "it connects: no --server"


def _read_password(path: Path) -> bytes:
    try:
        return path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise CredentialError(f"cannot read key password file {path}: {exc.strerror}") from None


def _build_authz(cfg: BridgeConfig) -> AuthzList | None:
    if cfg.tls_authz_file is not None:
        if cfg.tls_authz:
            raise CredentialError("give --tls-authz or --tls-authz-file, not both")
        return load_authz_file(cfg.tls_authz_file)
    if cfg.tls_authz:
        return AuthzList.from_patterns(cfg.tls_authz)
    return None


def _build_psk_setup(cfg: BridgeConfig) -> TLSSetup:
    assert cfg.tls_creds_psk is not None
    if cfg.tls_creds is not None:
        raise CredentialError("give --tls-creds or --tls-creds-psk, not both")
    # Imported here: only PSK users pay for it (importlib.metadata, sslpsk3) at start-up.
    from chardev_bridge.psk import build_psk_setup, check_psk_available

    route = check_psk_available()
    chosen = resolve_priority(cfg.tls_priority)
    log.info("TLS-PSK via %s; TLS priority %s, from %s", route, chosen.priority.text, chosen.source)
    setup = build_psk_setup(
        cfg.tls_creds_psk,
        endpoint=cfg.endpoint,
        username=cfg.tls_username,
        priority=chosen.priority,
    )
    return replace(setup, split_last_byte=cfg.qemu_stall_workaround)
