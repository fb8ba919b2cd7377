"""Counters with a window, shared by every worker and host on the channel layer's Redis (INCR
is atomic, so parallel requests are each counted), or in process memory with the in-memory
layer (one process). Sign-in throttling (realtime/web/signin_throttle.py) and the publish
API's rate limits (realtime/api/publish.py) count with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from realtime.messaging.redis_client import sync_client


class LocalCounters:
    """Counters with a window, in this process (the in-memory channel layer: one process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock, self.counts = clock, {}

    def get(self, keys: list[str]) -> list[int]:
        now = self.clock()
        return [self._get(key, now) for key in keys]

    def _get(self, key: str, now: float) -> int:
        count, ends = self.counts.get(key, (0, 0.0))
        return count if ends > now else 0

    def increment(self, keys: list[str], window: float) -> list[int]:
        """Count one more for each key (a key's window starts at its first count); the counts."""
        now = self.clock()
        for key in keys:
            count, ends = self.counts.get(key, (0, 0.0))
            self.counts[key] = (count + 1, ends) if ends > now else (1, now + window)
        counts = [self.counts[key][0] for key in keys]
        if len(self.counts) > 100_000:  # forget what has expired
            self.counts = {k: v for k, v in self.counts.items() if v[1] > now}
        return counts


class RedisCounters:
    """Counters with a window on the channel layer's first Redis host."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, keys: list[str]) -> list[int]:
        return [int(value or 0) for value in self.client.mget(keys)]

    def increment(self, keys: list[str], window: float) -> list[int]:
        """Count one more for each key, in one round trip; the counts."""
        # MULTI: the key cannot expire between the two (an INCR then would make a key that
        # never expires: a counter stuck past its limit for good).
        pipe = self.client.pipeline(transaction=True)
        for key in keys:
            pipe.set(key, 0, ex=max(1, round(window)), nx=True)  # the window starts here
            pipe.incr(key)  # keeps the expiry
        replies = pipe.execute()
        return [int(count) for count in replies[1::2]]


_local = LocalCounters()


def counters_store() -> LocalCounters | RedisCounters:
    client = sync_client()
    return _local if client is None else RedisCounters(client)
