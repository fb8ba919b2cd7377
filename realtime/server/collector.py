"""Python's garbage collector in a server process holding thousands of sockets.

Each open socket is a few hundred objects that live as long as it does (Twisted transport, TLS
connection, autobahn and daphne protocols, the consumer). With Python's default thresholds
(700, 10, 10) a worker holding 2,500 WSS sockets ran a full collection every 2-3 seconds
while broadcasts went out, 300-375 ms each, and most of them found nothing to free; every
broadcast that arrived meanwhile waited (docs/benchmarks.md). Reference counting frees almost
everything here; the collector is only for reference cycles, and those are rare and small.

So, once a process is loaded and before it serves:
- `gc.freeze()`: what the start-up created (Django, the URL conf, the modules: some hundred
  thousand objects, alive until exit) leaves the collector's generations for good;
- a larger first threshold (REALTIME_GC_THRESHOLD, 10,000 allocations instead of 700): the
  short-lived objects of a broadcast (a few per socket written to) are mostly freed by their
  reference counts before a collection sees them, so they are not promoted into the older
  generations and do not pull full collections after them.

Measured (bench, 5,000 WSS sockets on 2 workers): no full collection while broadcasts go out,
where there were 300-375 ms ones every 2-3 s; young collections of 20-40 ms remain. 50,000
made those young collections longer (30-165 ms) for no fewer full ones.

Cycles are still collected, only less often; `REALTIME_GC_THRESHOLD=0` keeps Python's defaults.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger("realtime.server.collector")

# Python's own second and third thresholds: how many collections of the generation below
# make one of the next.
OLDER_THRESHOLDS = (10, 10)


def tune_for_serving(threshold: int) -> bool:
    """Freeze what start-up built and raise the collection threshold to `threshold`
    (REALTIME_GC_THRESHOLD); False when it is 0 (turned off)."""
    if threshold <= 0:
        return False
    gc.collect()  # whatever start-up left as garbage goes now, not into the frozen generation
    gc.freeze()
    gc.set_threshold(threshold, *OLDER_THRESHOLDS)
    logger.debug(
        "Garbage collector: %d start-up objects frozen, threshold %d",
        gc.get_freeze_count(),
        threshold,
    )
    return True
