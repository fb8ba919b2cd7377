"""The periodic work of a worker: on the Redis layer, republish, then catch up; on any layer,
the history sweep.

Registered with the server floor (realtime.server.hooks) by `websocket_application()`, so that
the server runs it every MAINTENANCE_INTERVAL seconds without importing the app. The sweep
runs every REALTIME_HISTORY_SWEEP_INTERVAL seconds on one worker over all hosts (a short Redis
lock; any worker without Redis, every delete being idempotent), deleting streams.SWEEP_BATCH
rows per trip to the database thread so that other database work goes in between. What each
does, and why: docs/reliability.md ("The mechanisms"), docs/operations.md ("History in the
database").
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import redis
from channels.db import database_sync_to_async
from django.utils import timezone

from realtime.conf import conf
from realtime.messaging import client_publish, streams
from realtime.messaging.delivery import Frame
from realtime.messaging.fanout import MAINTENANCE_INTERVAL, OVERLAP, fanout
from realtime.messaging.redis_client import async_client, redis_host
from realtime.messaging.streams import republish_pending
from realtime.ops import live_stats, metrics
from realtime.server import hooks
from realtime.server.prometheus import child

logger = logging.getLogger("realtime.messaging.maintenance")

SWEEP_KEY = "realtime:history:sweeping"  # held by the worker that sweeps this interval
Batch = TypeVar("Batch")


async def maintain() -> None:
    """Publish what was stored and never published, then deliver what Redis lost."""
    await database_sync_to_async(republish_pending)()
    await fanout.catch_up()


async def report_live_stats() -> None:
    """Write this worker's part of the admin's live view to Redis, then push the whole view to
    its sockets that watch it (realtime/ops/live_stats.py)."""
    if not await live_stats.report(len(fanout.sockets)):
        return
    watchers = list(fanout.streams.subscribers(live_stats.TOPIC))
    if watchers:
        frame = Frame(await live_stats.stats_frame())
        for subscription in watchers:
            subscription.tell(frame)
        child(metrics.MESSAGES, "out", "stats").inc(len(watchers))


# --- The history sweep ------------------------------------------------------------------------


def sweep_interval() -> float:
    """Seconds between two history sweeps (REALTIME_HISTORY_SWEEP_INTERVAL)."""
    return float(conf.REALTIME_HISTORY_SWEEP_INTERVAL)


class Sweeper:
    """This worker's turn at the sweep, and where its last sweep began."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.client: Any = None
        self.last_began: datetime | None = None

    async def my_turn(self) -> bool:
        """Whether this worker sweeps now: it took the lock, which lasts most of an interval
        (so that the next tick of any worker after it takes it again), or Redis is not there."""
        if self.client is None:
            self.client = async_client()
        if self.client is None:
            return True
        lock_ms = max(int(sweep_interval() * 900), 1)
        try:
            return bool(await self.client.set(SWEEP_KEY, self.token, nx=True, px=lock_ms))
        except (redis.RedisError, OSError):
            return True  # deleting twice is harmless; never deleting is not

    def trim_from(self, now: datetime) -> datetime:
        """Since when published streams may hold more than their window.count. Once the
        expired rows are gone, every stream left published within the longer of the two ages;
        after a sweep of this worker, only those published since (less OVERLAP: a message is
        stamped before its transaction commits) can have grown."""
        longest = max(conf.REALTIME_TOPIC_HISTORY_TTL, conf.REALTIME_RESUME_MAX_AGE)
        oldest = now - timedelta(seconds=longest)
        return oldest if self.last_began is None else max(oldest, self.last_began - OVERLAP)


sweeper = Sweeper()


async def sweep_history() -> None:
    """The periodic sweep: delete beyond every stream's history when it is this worker's turn."""
    if await sweeper.my_turn():
        await sweep()


async def sweep() -> int:
    """Delete every stream's messages beyond its window, and the publish receipts past
    REALTIME_PUBLISH_ID_TTL, in batches; returns how many."""
    began, started = timezone.now(), time.monotonic()
    deleted = 0
    for rows in streams.expired(began):
        deleted += await until_done(streams.delete_some, rows)
    names = await database_sync_to_async(streams.published_since)(sweeper.trim_from(began))
    for at in range(0, len(names), streams.STREAMS_PER_TRIM):
        deleted += await until_done(streams.trim_some, names[at : at + streams.STREAMS_PER_TRIM])
    sweeper.last_began = began
    deleted += await until_done(client_publish.forget_expired_receipts, None)
    if deleted:
        logger.info(
            "History sweep deleted %d message(s) in %.2f s", deleted, time.monotonic() - started
        )
    return deleted


async def until_done(batch: Callable[[Batch], int], argument: Batch) -> int:
    """Run `batch(argument)` in the database thread until it deletes less than a full batch."""
    deleted = 0
    while True:
        count = await database_sync_to_async(batch)(argument)
        deleted += count
        if count < streams.SWEEP_BATCH:
            return deleted


def schedule() -> None:
    """Ask the server to run maintain() and report_live_stats() when the layer is Redis (the
    in-memory one loses nothing and reaches no other process), and the history sweep always."""
    if redis_host() is not None:
        hooks.every(MAINTENANCE_INTERVAL, maintain)
        hooks.every(live_stats.interval(), report_live_stats)
    hooks.every(sweep_interval(), sweep_history)
