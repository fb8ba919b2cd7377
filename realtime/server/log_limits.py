"""At most one log line per key (a client address) per interval, in bounded memory.

Log lines anyone can cause cheaply (a refused connection, a WebSocket to an unknown path, a
foreign Host header) are said once a minute per client address; both floors use this.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LOG_EVERY = 60.0  # seconds: one line per client address at most this often
REMEMBERED_ADDRESSES = 10_000  # beyond this, the oldest are forgotten (memory stays bounded)


class OncePerInterval:
    """Whether to log for a key now: once per `interval` seconds per key, in bounded memory."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self.last: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = self.clock()
        if now - self.last.get(key, -self.interval) < self.interval:
            return False
        self.last.pop(key, None)
        self.last[key] = now
        if len(self.last) > REMEMBERED_ADDRESSES:
            del self.last[next(iter(self.last))]
        return True
