"""``/metrics``: the server's state and counters in the Prometheus text format.

Everything is read at scrape time by one custom collector (from the hub, the connection
set and :data:`~geventchat.core.stats.STATS`): nothing on the chat's paths calls into
``prometheus_client``, and a scrape costs one pass over the connections.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from geventchat.core.stats import STATS, WRITE_BUCKETS
from geventchat.edges.base import EdgeContext

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Protocols always listed, with 0 when nobody speaks them (dashboards want the series).
PROTOCOLS = ("native", "irc", "websocket", "http")


class ChatCollector:
    """The chat server's metrics, read from ``ctx`` when scraped."""

    def __init__(self, ctx: EdgeContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx, hub, s = self.ctx, self.ctx.hub, STATS
        conns = GaugeMetricFamily("geventchat_connections", "Open client connections",
                                  labels=["protocol"])
        counts = Counter(getattr(c, "protocol", "?") for c in list(ctx.connections))
        for proto in (*PROTOCOLS, *sorted(set(counts) - set(PROTOCOLS))):
            conns.add_metric([proto], counts.get(proto, 0))
        yield conns
        yield GaugeMetricFamily("geventchat_users", "Registered users (past the name step)",
                                value=len(hub.users))
        yield GaugeMetricFamily("geventchat_rooms", "Rooms open (the lobby and every room "
                                "with a member)", value=len(hub.rooms))
        yield CounterMetricFamily("geventchat_lines_received", "Lines (and WebSocket "
                                  "messages) received from clients", value=s.lines_received)
        yield CounterMetricFamily("geventchat_deliveries", "Fan-out deliveries: one per "
                                  "member per room batch", value=s.deliveries)
        yield CounterMetricFamily("geventchat_fanout_bytes", "Bytes handed to members' "
                                  "outputs by room fan-out", value=s.bytes_out)
        yield CounterMetricFamily("geventchat_sendq_disconnects", "Clients disconnected "
                                  "because their send queue overflowed",
                                  value=s.sendq_disconnects)
        yield CounterMetricFamily("geventchat_flood_throttles", "Lines held back by flood "
                                  "control", value=s.flood_throttles)
        yield CounterMetricFamily("geventchat_flood_kicks", "Clients disconnected for "
                                  "flooding", value=s.flood_kicks)
        buckets, acc = [], 0
        for bound, n in zip((*WRITE_BUCKETS, float("inf")), s.write_buckets, strict=True):
            acc += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
        yield HistogramMetricFamily("geventchat_history_write_seconds", "Time of one history "
                                    "batch write (append, and fsync when due)",
                                    buckets=buckets, sum_value=s.write_sum)
        up = GaugeMetricFamily("geventchat_backplane_up", "1 while the message backplane "
                               "is reachable (the in-process one always is)",
                               labels=["backend"])
        broker = hub.broker
        up.add_metric([getattr(broker, "backend", "local")],
                      1 if getattr(broker, "backplane_up", True) else 0)
        yield up


def exposition(ctx: EdgeContext) -> bytes:
    """The metrics page for the server ``ctx`` (its registry is made on first scrape)."""
    registry = getattr(ctx, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ChatCollector(ctx))
        ProcessCollector(registry=registry)
        ctx.metrics_registry = registry  # type: ignore[attr-defined]
    return generate_latest(registry)
