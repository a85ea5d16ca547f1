"""TLS servers without session resumption, as QEMU's.

QEMU's TLS chardevs resume no sessions (gnutls has no session store unless the application
gives it one), and a console server runs for months: OpenSSL's server-side session cache
keeps every full TLS 1.2 handshake of a client that shuts down cleanly and offers no ticket
(about 1 KB each, for 7,200 s, up to 20,480 entries), and TLS 1.2 tickets resume without the
certificate exchange. So a server context issues no tickets (``OP_NO_TICKET``,
``num_tickets = 0``) and keeps no sessions.

Python's ``ssl`` has no way to set ``SSL_CTX_set_session_cache_mode``, so it is called through
``ctypes`` on the ``SSL_CTX`` behind the ``SSLContext``: the first field after the object
header of CPython's context object, in the very libssl ``_ssl`` is linked against. Where
that layout cannot be relied on (another interpreter, a free-threaded or debug build) the
cache stays as OpenSSL made it, bounded by its own limits, and :func:`disable_resumption`
says so by returning False.
"""

from __future__ import annotations

import ctypes
import functools
import ssl
import sys

# openssl/ssl.h
_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_CTRL_GET_SESS_CACHE_MODE = 45
_SSL_SESS_CACHE_OFF = 0


@functools.cache
def _ssl_ctx_ctrl() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """``SSL_CTX_ctrl`` from the libssl the ``_ssl`` module uses, or None."""
    if (
        sys.implementation.name != "cpython"
        # A free-threaded build ("t" in its ABI flags) has another object header.
        or "t" in getattr(sys, "abiflags", "")
        or hasattr(sys, "getobjects")  # Py_TRACE_REFS widens the object header
    ):
        return None
    import _ssl

    path = getattr(_ssl, "__file__", None)
    if path is None:
        return None
    try:
        # dlsym on the module's handle also searches the libraries it was linked with.
        func = ctypes.CDLL(path).SSL_CTX_ctrl
    except (OSError, AttributeError):
        return None
    func.restype = ctypes.c_long
    func.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    return func


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    # PySSLContext: PyObject_HEAD (reference count, type), then SSL_CTX *ctx.
    header = 2 * ctypes.sizeof(ctypes.c_void_p)
    return ctypes.c_void_p.from_address(id(ctx) + header).value


def disable_resumption(ctx: ssl.SSLContext) -> bool:
    """Make a server context issue no tickets and cache no sessions.

    Returns whether the session cache is off (False: tickets are off, but this interpreter
    gives no safe way to switch OpenSSL's cache off).
    """
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    ctrl = _ssl_ctx_ctrl()
    if ctrl is None:
        return False
    pointer = _ssl_ctx_pointer(ctx)
    if not pointer:
        return False
    ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)
    return bool(ctrl(pointer, _SSL_CTRL_GET_SESS_CACHE_MODE, 0, None) == _SSL_SESS_CACHE_OFF)
