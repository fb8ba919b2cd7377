"""How often something may happen: a token bucket, and at most one log line per key per interval.

`TokenBucket` meters a client: the server floor's frame budget (realtime/server/frame_budget.py)
and the app's message and replay limits (realtime/websocket/limits.py, replays.py).
`OncePerInterval` keeps log lines anyone can cause cheaply (a refused connection, a WebSocket to
an unknown path, a foreign Host header) to once a minute per client address, in bounded memory;
both floors use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LOG_EVERY = 60.0  # seconds: one line per client address at most this often
REMEMBERED_ADDRESSES = 10_000  # beyond this, the oldest are forgotten (memory stays bounded)


class TokenBucket:
    """`rate` tokens a second up to `burst`; counts takes refused since it was last full."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.updated = clock()
        self.dropped = 0

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= self.burst:
            self.dropped = 0  # a full bucket means the client paused: forgive
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        return False


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
