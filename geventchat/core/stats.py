"""Process-wide counters for metrics, kept as cheap as the paths they count.

Plain integer attributes on one object with ``__slots__``: an increment is one attribute
load and store. The fan-out path counts once per batch and protocol (deliveries and bytes
as ``members * len(data)``), never once per delivery; the rest (lines received, flood
throttles, sendq disconnects, history writes) count at their own much lower rates.
Nothing here knows Prometheus: the HTTP edge reads these at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds (seconds) of the history write latency buckets: a healthy disk write with
#: or without fsync lands in the first few; the tail shows a stalled disk.
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0)


class Stats:
    """Counters since the process started."""

    __slots__ = ("lines_received", "deliveries", "bytes_out", "sendq_disconnects",
                 "flood_throttles", "flood_kicks", "write_buckets", "write_sum",
                 "write_count")

    def __init__(self) -> None:
        self.lines_received = 0
        self.deliveries = 0  # one per member per fan-out batch
        self.bytes_out = 0  # bytes handed to members' outputs by fan-out
        self.sendq_disconnects = 0
        self.flood_throttles = 0
        self.flood_kicks = 0
        self.write_buckets = [0] * (len(WRITE_BUCKETS) + 1)  # last: +Inf
        self.write_sum = 0.0
        self.write_count = 0

    def history_write(self, seconds: float) -> None:
        """One history batch write (append, and fsync if due) took ``seconds``."""
        self.write_buckets[bisect_left(WRITE_BUCKETS, seconds)] += 1
        self.write_sum += seconds
        self.write_count += 1


STATS = Stats()
