"""Presence: how many clients are connected now, per audience, summed over all workers.

Each worker process counts its own sockets and keeps them in Redis under a key of its own
(`realtime:presence:<host>:<pid>`) that expires PRESENCE_TTL seconds after its last refresh,
so the counts of a worker that died vanish on their own. Without Redis (the in-memory
layer) only this process's counts are known.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Iterable

import redis

from realtime.broadcasting.redis_client import async_client, sync_client

logger = logging.getLogger("realtime.broadcasting.presence")

KEY_PREFIX = "realtime:presence:"
PRESENCE_TTL = 15  # seconds: three missed refreshes and a worker counts as gone
REFRESH_INTERVAL = 5
AUDIENCES = ("everyone", "authenticated", "staff")

local_counts: Counter[str] = Counter()
_changed: asyncio.Event | None = None
_refresher: asyncio.Task[None] | None = None


def process_key() -> str:
    return f"{KEY_PREFIX}{socket.gethostname()}:{os.getpid()}"


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
            await client.set(process_key(), json.dumps(dict(local_counts)), ex=PRESENCE_TTL)
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


def counts() -> dict[str, int]:
    """Clients connected now per audience, over all workers (this process only without Redis)."""
    client = sync_client()
    if client is None:
        return {audience: max(local_counts[audience], 0) for audience in AUDIENCES}
    totals: Counter[str] = Counter()
    keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=1000))
    for value in client.mget(keys) if keys else []:
        if value is not None:
            totals.update(json.loads(value))
    return {audience: max(totals[audience], 0) for audience in AUDIENCES}
