"""Python's garbage collector in a server process holding thousands of sockets.

Each open socket is a few hundred objects that live as long as it does, and the collector's
full collections over them stalled broadcasts while finding almost nothing to free (reference
counting frees nearly everything here; figures in docs/benchmarks.md). So, once a process is
loaded and before it serves, `gc.freeze()` takes what start-up created out of the collector's
generations, and a larger first threshold (REALTIME_GC_THRESHOLD) lets a broadcast's
short-lived objects die by reference count before a collection promotes them. Cycles are
still collected, only less often; `REALTIME_GC_THRESHOLD=0` keeps Python's defaults.
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
