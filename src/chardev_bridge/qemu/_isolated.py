"""Run a function in a forked child and return its result: memory the function touches
(cryptography's OpenSSL backend for signature checks, key parsing) stays in the child.

A bridge checks its credentials once at start and at each reload; the checks need parts
of cryptography that the bridge never uses again, and that stay resident for its life
once loaded (a few MiB for every idle bridge process).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def in_child(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` computed in a forked child; raises what it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child: its coverage is not collected)
        os.close(read_end)
        try:
            outcome: tuple[str, Any] = ("value", fn(*args, **kwargs))
        except BaseException as exc:
            outcome = ("error", exc)
        try:
            data = pickle.dumps(outcome)
        except Exception as exc:
            data = pickle.dumps(("error", RuntimeError(f"{fn.__name__}: {exc!r}")))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"{fn.__name__} ended its process without an answer")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise value
    result: T = value
    return result
