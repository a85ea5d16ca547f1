"""Run a bridge: accept or make remote connections and splice each with the local end."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import trio

from chardev_bridge.authz import AuthzList, load_authz_file
from chardev_bridge.backoff import Backoff, RepeatFilter
from chardev_bridge.config import BridgeConfig
from chardev_bridge.credcheck import check_creds, has_errors
from chardev_bridge.datapath import Carry, SessionStats, splice
from chardev_bridge.local import LocalEnd, open_local_end
from chardev_bridge.local.pty import PtyEnd
from chardev_bridge.local.sockets import format_hostport
from chardev_bridge.priority import resolve_priority
from chardev_bridge.remote import RemoteSession, TLSSetup, peer_name, start_session
from chardev_bridge.tlserrors import describe_tls_error
from chardev_bridge.tlspolicy import (
    CredentialError,
    PeerRejected,
    TLSPolicy,
    load_crl,
    load_x509_creds,
    make_ssl_context,
    server_hostname_for,
)
from chardev_bridge.tlsstream import TLSHandshakeError

log = logging.getLogger("chardev_bridge")

# Handshakes allowed in flight at once on a listening bridge: a burst of scanners or
# slowloris clients must not exhaust memory, nor stop a good client (it gets a slot as soon
# as a stalled one times out).
MAX_PENDING_HANDSHAKES = 64

# A TLS server that closes within this time of the handshake, having sent nothing and no
# close_notify, most likely rejected our certificate after the handshake (as QEMU does).
_QUICK_REJECT_SECONDS = 2.0

# A session that lasted this long resets the reconnect backoff.
_STABLE_SESSION_SECONDS = 10.0

_CONNECT_ERRORS = (
    OSError,
    TLSHandshakeError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    PeerRejected,
)


@dataclass
class BridgeReady:
    """Passed to ``task_status.started()`` once the bridge is up (for tests and embedders)."""

    local: str
    pty_path: str | None = None
    ports: list[int] = field(default_factory=list)


def build_tls_setup(cfg: BridgeConfig) -> TLSSetup | None:
    """The TLS configuration for ``cfg``, after QEMU's load-time checks of the credentials.

    Raises ``CredentialError`` (every error QEMU would report, one per line) or
    ``PriorityError``/``AuthzFileError`` (ValueError) for a bad priority or allow-list.
    """
    if cfg.tls_creds is None:
        return None
    password = _read_password(cfg.key_password_file) if cfg.key_password_file else None
    findings = check_creds(cfg.tls_creds, cfg.endpoint, password=password)
    for finding in findings:
        if finding.level == "warning":
            log.warning("%s", finding.message)
    if has_errors(findings):
        raise CredentialError("\n".join(f.message for f in findings if f.level == "error"))
    chosen = resolve_priority(cfg.tls_priority)
    log.info("TLS priority %s, from %s", chosen.priority.text, chosen.source)
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
        policy=policy,
        server_hostname=server_hostname_for(policy, cfg.host),
        crl=load_crl(policy.creds) if policy.endpoint == "server" else None,
    )


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


async def run_bridge(
    cfg: BridgeConfig, *, task_status: trio.TaskStatus[BridgeReady] = trio.TASK_STATUS_IGNORED
) -> int:
    """Run until the local end is exhausted, the connection ends (without ``reconnect``),
    or the caller cancels. Returns the process exit status."""
    tls = build_tls_setup(cfg)
    async with open_local_end(cfg.local, link=cfg.link) as local:
        await local.start()
        ready = BridgeReady(
            local=local.describe(), pty_path=local.path if isinstance(local, PtyEnd) else None
        )
        log.info("local end: %s", ready.local)
        if cfg.listen:
            return await _serve(cfg, tls, local, ready, task_status)
        task_status.started(ready)
        return await _connect(cfg, tls, local)


async def _run_session(
    remote: RemoteSession,
    local_stream: trio.abc.Stream,
    local: LocalEnd,
    carry: Carry,
    tls: TLSSetup | None,
) -> SessionStats:
    """Splice one remote session with the local end and log how it went."""
    began = trio.current_time()
    stats = SessionStats()
    try:
        await splice(
            local_stream,
            remote.stream,
            local_persistent=local.persistent,
            carry=carry,
            stats=stats,
        )
    finally:
        with trio.CancelScope(shield=True):
            await remote.stream.aclose()
            if not local.persistent:
                await local_stream.aclose()
        _log_disconnect(remote, stats, trio.current_time() - began)
    lasted = trio.current_time() - began
    if (
        tls is not None
        and not tls.server_side
        and remote.ragged_eof
        and stats.to_local == 0
        and lasted < _QUICK_REJECT_SECONDS
    ):
        stats.failure = (
            "the server closed the connection right after the handshake without a TLS alert:"
            " it probably rejected our client certificate (QEMU does this when the certificate"
            " fails verification or tls-authz)"
        )
        log.error("%s: %s", remote.peer, stats.failure)
    return stats


def _log_disconnect(remote: RemoteSession, stats: SessionStats, lasted: float) -> None:
    if stats.failure is not None:
        how = f"{stats.failed_side} failed: {stats.failure}"
    elif stats.remote_eof:
        how = "remote closed without TLS close_notify" if remote.ragged_eof else "remote closed"
    elif stats.local_eof:
        how = "local end closed"
    else:
        how = "bridge shutting down"
    log.info(
        "disconnected from %s after %.1fs: %d bytes sent, %d bytes received; %s",
        remote.peer,
        lasted,
        stats.to_remote,
        stats.to_local,
        how,
    )


async def _serve(
    cfg: BridgeConfig,
    tls: TLSSetup | None,
    local: LocalEnd,
    ready: BridgeReady,
    task_status: trio.TaskStatus[BridgeReady],
) -> int:
    """A listening bridge: one session at a time, as on a serial line."""
    listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
    for listener in listeners:
        host, port = listener.socket.getsockname()[:2]
        log.info("listening on %s (%s)", format_hostport(host, port), "TLS" if tls else "plain TCP")
        if port not in ready.ports:
            ready.ports.append(port)
    task_status.started(ready)
    carry = Carry()
    active: RemoteSession | None = None
    pending = 0

    async def handle(tcp: trio.SocketStream) -> None:
        nonlocal active, pending
        peer = peer_name(tcp)
        if active is not None or pending >= MAX_PENDING_HANDSHAKES:
            busy = f"a session with {active.peer} is active" if active else "too many handshakes"
            log.warning("refused %s: %s", peer, busy)
            await trio.aclose_forcefully(tcp)
            return
        pending += 1
        try:
            remote = await start_session(tcp, tls, handshake_timeout=cfg.handshake_timeout)
        except TLSHandshakeError as exc:
            log.warning("TLS handshake with %s failed: %s", peer, describe_tls_error(exc))
            return
        except trio.TooSlowError:
            log.warning("dropped %s: no TLS handshake within %gs", peer, cfg.handshake_timeout)
            return
        except PeerRejected as exc:
            log.warning("denied %s: %s", peer, exc)
            return
        finally:
            pending -= 1
        if active is not None:
            log.warning("refused %s: a session with %s is active", peer, active.peer)
            await trio.aclose_forcefully(remote.stream)
            return
        active = remote
        try:
            log.info("session from %s: %s", peer, remote.describe())
            try:
                local_stream = await local.next_stream()
            except OSError as exc:
                log.error("closing %s: cannot open local end %s: %s", peer, local.describe(), exc)
                await trio.aclose_forcefully(remote.stream)
                return
            await _run_session(remote, local_stream, local, carry, tls)
        finally:
            active = None
        if local.exhausted:
            log.info("local end %s has ended; stopping", local.describe())
            nursery.cancel_scope.cancel()

    async def accept_loop(listener: trio.SocketListener) -> None:
        while True:
            try:
                tcp = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: say so, back off briefly, keep serving.
                log.error("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(handle, tcp)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener)
    return 0


async def _connect(cfg: BridgeConfig, tls: TLSSetup | None, local: LocalEnd) -> int:
    """A connecting bridge: one session, or sessions forever with ``reconnect``."""
    target = format_hostport(cfg.host, cfg.port)
    backoff = Backoff(cfg.reconnect or 0.0, max(cfg.reconnect_max, cfg.reconnect or 0.0))
    repeats = RepeatFilter()
    carry = Carry()
    while True:
        began = trio.current_time()
        failure: str | None = None
        try:
            local_stream = await local.next_stream()
        except OSError as exc:
            log.error("cannot open local end %s: %s", local.describe(), exc)
            if cfg.reconnect is None:
                return 1
            await trio.sleep(backoff.next_delay())
            continue
        try:
            tcp = await trio.open_tcp_stream(cfg.host, cfg.port)
            remote = await start_session(tcp, tls, handshake_timeout=cfg.handshake_timeout)
        except _CONNECT_ERRORS as exc:
            if not local.persistent:
                await trio.aclose_forcefully(local_stream)
            if isinstance(exc, trio.TooSlowError):
                failure = f"no TLS handshake within {cfg.handshake_timeout:g}s"
            elif isinstance(exc, PeerRejected):
                failure = f"server denied by our policy: {exc}"
            else:
                failure = describe_tls_error(exc)
            log_it, count = repeats.should_log(failure)
            if log_it or cfg.reconnect is None:
                again = f" ({count} times in a row)" if count > 1 else ""
                log.error("cannot connect to %s: %s%s", target, failure, again)
        else:
            log.info("connected to %s: %s", remote.peer, remote.describe())
            stats = await _run_session(remote, local_stream, local, carry, tls)
            failure = stats.failure
            if failure is None:
                repeats.reset()
        if local.exhausted:
            return 0
        if cfg.reconnect is None:
            return 0 if failure is None else 1
        if trio.current_time() - began >= _STABLE_SESSION_SECONDS:
            backoff.reset()
        delay = backoff.next_delay()
        log.debug("reconnecting to %s in %.1fs", target, delay)
        await trio.sleep(delay)
