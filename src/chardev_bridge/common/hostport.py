"""``host:port`` as people write it, with IPv6 literals in brackets."""

from __future__ import annotations


def format_hostport(host: str, port: int) -> str:
    """``host:port``, or ``[v6]:port`` for an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
