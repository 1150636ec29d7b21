"""Flood control: a per-connection token bucket, sans-IO (the caller passes the clock).

In the spirit of IRC servers: a client may send a burst of lines, then a few per second.
Past that it is *slowed* (the connection stops reading until a token is due, so its lines
wait in its own socket buffer and nobody else notices), told once, and disconnected if it
keeps going for ``kick_after`` more lines before the bucket has refilled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

#: Defaults: a burst of 10 lines, then 3 lines/s, like common IRC server classes.
RATE = 3.0
BURST = 10
#: Lines over the limit, within one flood, before the flooder is disconnected.
KICK_AFTER = 40


class Verdict(Enum):
    OK = "ok"
    SLOW = "slow"  # wait ``FloodGate.wait`` seconds before handling this line
    SLOW_FIRST = "slow_first"  # the same, and tell the client (first time in this flood)
    KICK = "kick"


@dataclass(slots=True)
class FloodGate:
    """Token bucket with a flood episode counter. ``rate <= 0`` disables it."""

    rate: float = RATE
    burst: int = BURST
    kick_after: int = KICK_AFTER
    tokens: float = field(init=False)
    last: float | None = field(init=False, default=None)
    excess: int = field(init=False, default=0)
    wait: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, now: float) -> Verdict:
        """Account for one line arriving at time ``now`` (seconds, monotonic)."""
        if self.rate <= 0:
            return Verdict.OK
        if self.last is not None:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= self.burst:
            self.excess = 0  # the bucket refilled: any earlier flood is over
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.wait = 0.0
            return Verdict.OK
        self.excess += 1
        if self.excess > self.kick_after:
            return Verdict.KICK
        # This line spends the token that arrives next; the reader sleeps until then.
        self.wait = (1.0 - self.tokens) / self.rate
        self.tokens -= 1.0
        return Verdict.SLOW_FIRST if self.excess == 1 else Verdict.SLOW
