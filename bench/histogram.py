"""Latency histogram shared by the Python engine and the merger of all workers' results.

Workers can't ship every latency sample cheaply, and percentiles of percentiles are wrong,
so each worker keeps a log-linear histogram (64 sub-buckets per power of two, so a bucket
is at most 1.6% wide) and reports ``[[bucket_midpoint_ns, count], ...]``. Merging is then
exact: sum the counts per midpoint. The bucketing must match ``genclient.c`` bit for bit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

SUB_BITS = 6
SUB_COUNT = 1 << SUB_BITS


def bucket_index(ns: int) -> int:
    """Index of the bucket holding ``ns``; the same formula as ``hist_index`` in C."""
    if ns < SUB_COUNT:
        return max(ns, 0)
    exp = ns.bit_length() - 1
    return (exp - SUB_BITS + 1) * SUB_COUNT + ((ns >> (exp - SUB_BITS)) & (SUB_COUNT - 1))


def bucket_mid(index: int) -> int:
    """Midpoint of a bucket: the value reported for every sample in it."""
    if index < SUB_COUNT:
        return index
    exp = index // SUB_COUNT + SUB_BITS - 1
    low = (SUB_COUNT + index % SUB_COUNT) << (exp - SUB_BITS)
    return low + ((1 << (exp - SUB_BITS)) >> 1)


class Histogram:
    """Counts per bucket index; what a Python worker records and reports."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.total = 0
        self.max_ns = 0

    def record(self, ns: int) -> None:
        """Add one latency sample, in nanoseconds."""
        self.counts[bucket_index(ns)] += 1
        self.total += 1
        self.max_ns = max(self.max_ns, ns)

    def to_pairs(self) -> list[list[int]]:
        """The wire form: ``[[midpoint_ns, count], ...]``, as genclient prints it."""
        return [[bucket_mid(i), n] for i, n in sorted(self.counts.items())]


def merge(histograms: Iterable[Sequence[Sequence[int]]]) -> list[tuple[int, int]]:
    """Sum several workers' ``[[midpoint_ns, count], ...]`` lists into one, sorted."""
    merged: Counter[int] = Counter()
    for pairs in histograms:
        for mid, count in pairs:
            merged[int(mid)] += int(count)
    return sorted(merged.items())


def percentile(pairs: Sequence[tuple[int, int]], q: float) -> int | None:
    """The ``q``-th percentile (0-100) of a merged histogram, or None when it is empty."""
    total = sum(count for _, count in pairs)
    if total == 0:
        return None
    rank = max(1, round(q / 100 * total))  # nearest-rank: the sample at this 1-based rank
    seen = 0
    for mid, count in pairs:
        seen += count
        if seen >= rank:
            return mid
    return pairs[-1][0]
