"""The server process's garbage-collection policy: full collections on a clock, not in
the middle of a crowd arriving.

CPython runs a full collection whenever the long-lived objects have grown by a quarter
since the last one. A chat server's objects are its connections (about 20 tracked objects
each), so a storm of 10,000 arrivals triggers half a dozen full collections of up to
200,000 objects, each a pause of 40-130 ms during which nobody's line moves (measured
with ``gc.callbacks`` in ``bench/loadtest.py --idle 10000 --bystander``: the bystander's
echo p99 was 84-187 ms with them, 10-30 ms without).

So the serving process (never the library, never a test) calls :func:`tune`:

* everything alive at start-up (modules, functions, the loaded history) is frozen out of
  every collection (``gc.freeze``): it is never garbage, and it is a third of the
  objects a full collection would otherwise walk at 10,000 clients;
* young collections run as before (they are cheap: they walk new objects only);
* full collections run from a greenlet every :data:`FULL_EVERY` seconds, and only when
  objects have come and gone since the last one. Connections free themselves by
  reference counting (they keep no cycles), so what waits for the clock is the odd
  cycle (a traceback, a greenlet's frames), collected a minute late at most.
"""

from __future__ import annotations

import gc
import logging
import time

import gevent

log = logging.getLogger(__name__)

#: Seconds between full collections.
FULL_EVERY = 60.0
#: Young (generation 1) collections since the last full one before a full one is worth
#: running; CPython's own default for its threshold 2.
FULL_AFTER = 10
#: A generation-2 threshold that CPython never reaches: the clock decides instead.
_NEVER = 1 << 30


def tune(every: float = FULL_EVERY) -> gevent.Greenlet:
    """Freeze what exists, leave full collections to a clock; returns the greenlet that
    runs them (kill it to stop)."""
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, _NEVER)
    return gevent.spawn(_full_collections, every)


def _full_collections(every: float) -> None:
    while True:
        gevent.sleep(every)
        if gc.get_count()[2] < FULL_AFTER:
            continue  # nothing much was allocated: nothing to find
        started = time.perf_counter()
        found = gc.collect()
        log.debug("full collection: %d unreachable, %.1f ms", found,
                  (time.perf_counter() - started) * 1000)
