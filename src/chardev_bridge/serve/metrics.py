"""Prometheus exposition of a :class:`ProcessStatus` snapshot.

The only module that imports prometheus_client: it costs start-up memory that the
single-bridge command never pays. Metrics are built from a fresh snapshot at each scrape by
a custom collector on a private registry, so nothing is double-counted and the library's
global registry (with its process and GC collectors) stays out of the body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from chardev_bridge.serve.statusmodel import ProcessStatus

__all__ = ["CONTENT_TYPE", "StatusCollector", "metrics_text"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of :func:`metrics_text`'s body."""


class StatusCollector:
    """Turns a snapshot function into chardev_bridge_* metric families at each collection."""

    def __init__(self, snapshot: Callable[[], ProcessStatus]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not call the snapshot function."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families for the current snapshot."""
        status = self._snapshot()
        bridges = sorted(status.bridges, key=lambda b: b.name)
        # Counter names are given without "_total": prometheus_client appends it.
        moved = CounterMetricFamily(
            "chardev_bridge_bytes",
            "Bytes carried, by direction",
            labels=["bridge", "direction"],
        )
        sessions = CounterMetricFamily(
            "chardev_bridge_sessions", "Sessions started", labels=["bridge"]
        )
        connected = GaugeMetricFamily(
            "chardev_bridge_connected",
            "1 while a remote peer is connected, else 0",
            labels=["bridge"],
        )
        handshakes = CounterMetricFamily(
            "chardev_bridge_handshake_failures",
            "Failed TLS handshakes, by reason",
            labels=["bridge", "reason"],
        )
        reconnects = CounterMetricFamily(
            "chardev_bridge_reconnects", "Reconnection attempts", labels=["bridge"]
        )
        dropped = CounterMetricFamily(
            "chardev_bridge_dropped_bytes",
            "Bytes discarded, by reason",
            labels=["bridge", "reason"],
        )
        expiry = GaugeMetricFamily(
            "chardev_bridge_cert_expiry_timestamp_seconds",
            "Unix time at which the bridge's own certificate expires",
            labels=["bridge"],
        )
        viewers = GaugeMetricFamily("chardev_bridge_viewers", "Viewers attached", labels=["bridge"])
        for bridge in bridges:
            name = bridge.name
            moved.add_metric([name, "to_remote"], bridge.bytes_to_remote)
            moved.add_metric([name, "from_remote"], bridge.bytes_from_remote)
            sessions.add_metric([name], bridge.sessions)
            connected.add_metric([name], 1 if bridge.state == "connected" else 0)
            for reason, count in sorted(bridge.handshake_failures.items()):
                handshakes.add_metric([name, reason], count)
            reconnects.add_metric([name], bridge.reconnects)
            for reason, count in sorted(bridge.dropped_bytes.items()):
                dropped.add_metric([name, reason], count)
            # A bridge without a certificate of its own (plain TCP, PSK) has no expiry:
            # a made-up value would fire or silence expiry alerts.
            if bridge.cert_not_after is not None:
                expiry.add_metric([name], bridge.cert_not_after)
            viewers.add_metric([name], bridge.viewers)
        reload = GaugeMetricFamily(
            "chardev_bridge_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load or reload of the configuration",
        )
        if status.last_reload is not None:
            reload.add_metric([], status.last_reload)
        yield from (moved, sessions, connected, handshakes, reconnects, dropped)
        yield from (expiry, viewers, reload)


def metrics_text(snapshot: Callable[[], ProcessStatus]) -> bytes:
    """The ``/metrics`` body (Prometheus text format) for ``snapshot()``; see CONTENT_TYPE."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot))
    return generate_latest(registry)
