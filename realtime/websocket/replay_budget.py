"""A budget for replays: what a client may ask the worker's database thread to read again.

A replay (a position in the socket's URL, a `resume`, a `subscribe` with `since`) reads up to
REALTIME_RESUME_MAX_COUNT broadcasts or REALTIME_TOPIC_HISTORY_SIZE topic messages on the
worker's one database thread; the message rate alone let a client repeat them as fast as it
reconnects (docs/security.md has what that did to a worker). So replays take tokens from two
buckets: each socket's (REALTIME_REPLAY_RATE, REALTIME_REPLAY_BURST) and each client
address's on this worker, IPv6 by /64 (REALTIME_REPLAY_ADDRESS_RATE, _BURST). One refused is
not made and the client is told when to ask again (docs/protocol.md, "Replays"). What it read
is charged after it, one token per ROWS_PER_TOKEN rows, so a crowd behind one address
reconnecting with mostly empty replays gets through and a client asking for old history again
and again does not. An address's bucket is forgotten once full again, and at most
ADDRESSES_REMEMBERED are kept: memory stays bounded. A rate of 0 turns a bucket off.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from realtime import wire
from realtime.common.addresses import scope_client_key
from realtime.common.rates import TokenBucket
from realtime.conf import conf

# Bounds the worker's memory: 10,000 buckets took 2.8 MB (tracemalloc; test_replay_budget).
# Past it the least recently used address starts again from a full bucket.
ADDRESSES_REMEMBERED = 10_000
# Rows a replay reads per extra token it is charged: 500 broadcasts (the default resume limit)
# cost ten more, which keeps an address asking for them at under two a second with the
# default address rate (2 a second for 500-row replays measured /healthz at 80 ms median).
ROWS_PER_TOKEN = 50


class Bucket(TokenBucket):
    """A TokenBucket that can be looked at before it is spent from (two must agree)."""

    def level(self) -> float:
        """The tokens it holds now, refilled for the time since it was last looked at."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return self.tokens

    def wait_for(self, count: float) -> float:
        """Seconds until it holds `count` tokens (0 when it does)."""
        missing = count - self.level()
        return max(missing, 0.0) / self.rate

    def idle(self) -> bool:
        """Full again: as good as a new bucket, so it can be forgotten."""
        return self.level() >= self.burst


class AddressBuckets:
    """One bucket per client address, least recently used first."""

    def __init__(self, most: int = ADDRESSES_REMEMBERED, clock: Callable[[], float] | None = None):
        self.most = most
        self.clock = clock or time.monotonic
        self.buckets: OrderedDict[str, Bucket] = OrderedDict()

    def get(self, address: str, rate: float, burst: int) -> Bucket:
        self._forget_idle()
        bucket = self.buckets.pop(address, None)
        if bucket is None:
            bucket = Bucket(rate, burst, self.clock)
        bucket.rate, bucket.burst = rate, burst  # the settings as they are now
        self.buckets[address] = bucket
        while len(self.buckets) > self.most:
            self.buckets.popitem(last=False)
        return bucket

    def _forget_idle(self) -> None:
        # The least recently used come first: stop at the first one still refilling.
        while self.buckets and next(iter(self.buckets.values())).idle():
            self.buckets.popitem(last=False)


addresses = AddressBuckets()


def address_of(scope: dict[str, Any]) -> str | None:
    """The address the per-address bucket counts: the real client's, as the server put it in
    scope["client"] (realtime/server/client_address.py), an IPv6 one as its /64. None when
    there is none (a Unix socket, a test): then only the socket's own bucket counts."""
    return scope_client_key(scope) or None


class ReplayBudget:
    """One socket's replays: its own bucket and its address's."""

    def __init__(self, scope: dict[str, Any], clock: Callable[[], float] | None = None) -> None:
        self.buckets: list[Bucket] = []
        rate, burst = conf.REALTIME_REPLAY_RATE, max(conf.REALTIME_REPLAY_BURST, 1)
        if rate > 0:
            self.buckets.append(Bucket(rate, burst, clock or addresses.clock))
        rate, burst = conf.REALTIME_REPLAY_ADDRESS_RATE, max(conf.REALTIME_REPLAY_ADDRESS_BURST, 1)
        self.address = address_of(scope) if rate > 0 else None
        self.address_limits = (rate, burst)

    def take(self, count: int = 1) -> float:
        """Spend `count` replays (at most a burst) if both buckets hold them: 0.0. Else
        nothing is spent, and the answer is the seconds until both would."""
        buckets = self._buckets()
        needs = [min(count, bucket.burst) for bucket in buckets]
        wait = max((b.wait_for(n) for b, n in zip(buckets, needs, strict=True)), default=0.0)
        if wait > 0:
            return wait
        for bucket, need in zip(buckets, needs, strict=True):
            bucket.tokens -= need
        return 0.0

    def charge(self, rows: int) -> None:
        """Charge what a replay read: a token per whole ROWS_PER_TOKEN rows, from both buckets,
        down to at most a burst of debt (the next replays wait while it is paid back)."""
        cost = rows // ROWS_PER_TOKEN
        if cost <= 0:
            return
        for bucket in self._buckets():
            bucket.tokens = max(bucket.level() - cost, -bucket.burst)

    def _buckets(self) -> list[Bucket]:
        if self.address is None:
            return self.buckets
        return [*self.buckets, addresses.get(self.address, *self.address_limits)]


def retry_after(wait: float) -> int:
    """Whole seconds a client waits before it asks again (at least 1)."""
    return max(math.ceil(wait), 1)


def refused(wait: float, topic: str | None = None) -> str:
    """The error that answers a replay over the budget: nothing was done, ask again later."""
    seconds = retry_after(wait)
    what = "subscribe" if topic is not None else "resume"
    detail = (
        f"Too many replays: this {what} was refused and nothing changed; send it again in "
        f"{seconds} s."
    )
    message: dict[str, Any] = {"type": "error", "code": "rate_limited"}
    if topic is not None:
        message["topic"] = topic
    message.update(detail=detail, retry_after=seconds)
    return wire.encode(message)
