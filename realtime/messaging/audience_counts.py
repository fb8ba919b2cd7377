"""Presence: how many clients are connected now, per audience, summed over all workers.

Each worker process counts its own sockets and keeps them in Redis as one field
(`<host>:<pid>`) of one hash (`realtime:audiences`), stamped with when it stops counting:
PRESENCE_TTL seconds after the worker's last refresh, so the counts of a worker that died
are ignored, then removed, on their own. One HGETALL reads every worker's counts: no SCAN,
so no other key in Redis (a topic's presence set, which any signed-in user can create) makes
reading the counts slower; each broadcast reads them for its "Recipients". (Earlier versions
kept them in keys `realtime:presence:<host>:<pid>`, found by a SCAN that also walked every
topic's presence key. Such a key is no longer read and expires within PRESENCE_TTL; during a
rolling upgrade the counts leave out the workers not yet replaced.) Without Redis (the
in-memory layer) only this process's counts are known.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable

import redis

from realtime.messaging.redis_client import async_client, sync_client

logger = logging.getLogger("realtime.messaging.audience_counts")

COUNTS_KEY = "realtime:audiences"  # a hash: "<host>:<pid>" -> entry()
PRESENCE_TTL = 15  # seconds: three missed refreshes and a worker counts as gone
REFRESH_INTERVAL = 5
AUDIENCES = ("everyone", "authenticated", "staff")

local_counts: Counter[str] = Counter()
_changed: asyncio.Event | None = None
_refresher: asyncio.Task[None] | None = None


def process_field() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def entry(counts: dict[str, int], ttl: float = PRESENCE_TTL) -> str:
    """A worker's field: its counts, and the unix time after which they no longer count."""
    return json.dumps({"counts": counts, "until": time.time() + ttl})


def joined(audiences: Iterable[str]) -> None:
    local_counts.update(audiences)
    _changed_now()


def left(audiences: Iterable[str]) -> None:
    local_counts.subtract(audiences)
    _changed_now()


def _changed_now() -> None:
    """Wake the refresher (started on first use, in the server's event loop)."""
    global _changed, _refresher
    if _refresher is None or _refresher.done():
        client = async_client()
        if client is None:
            return
        _changed = asyncio.Event()
        _refresher = asyncio.get_running_loop().create_task(_refresh_forever(client))
    assert _changed is not None
    _changed.set()


async def _refresh_forever(client: redis.asyncio.Redis) -> None:
    assert _changed is not None
    failing = False
    while True:
        _changed.clear()
        try:
            await _store(client)
            failing = False
        except (redis.RedisError, OSError) as exc:
            if not failing:
                logger.warning("Cannot store presence in Redis: %s", exc)
            failing = True
        try:
            await asyncio.wait_for(_changed.wait(), REFRESH_INTERVAL)
            await asyncio.sleep(0.2)  # one write for a burst of connects
        except TimeoutError:
            pass


async def _store(client: redis.asyncio.Redis) -> None:
    """This worker's field, and the hash's expiry: when every worker has stopped, it goes."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hset(COUNTS_KEY, process_field(), entry(dict(local_counts)))
        pipe.expire(COUNTS_KEY, PRESENCE_TTL)
        await pipe.execute()


def counts() -> dict[str, int]:
    """Clients connected now per audience, over all workers (this process only without Redis)."""
    client = sync_client()
    if client is None:
        return {audience: max(local_counts[audience], 0) for audience in AUDIENCES}
    totals: Counter[str] = Counter()
    now, stale = time.time(), []
    for field, value in client.hgetall(COUNTS_KEY).items():
        worker = json.loads(value)
        if worker["until"] >= now:
            totals.update(worker["counts"])
        else:
            stale.append(field)
    if stale:  # a worker that died (a restarted one has another pid, so another field)
        client.hdel(COUNTS_KEY, *stale)
    return {audience: max(totals[audience], 0) for audience in AUDIENCES}
