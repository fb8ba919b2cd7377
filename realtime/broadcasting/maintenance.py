"""The periodic work of a worker on the Redis layer: republish, then catch up.

Registered with the server floor (realtime.server.hooks) by `websocket_application()`, so that
the server runs it every MAINTENANCE_INTERVAL seconds without importing the app.
"""

from __future__ import annotations

from channels.db import database_sync_to_async

from realtime.broadcasting import live_stats
from realtime.broadcasting.delivery import Frame
from realtime.broadcasting.fanout import MAINTENANCE_INTERVAL, fanout
from realtime.broadcasting.redis_client import redis_host
from realtime.broadcasting.streams import republish_pending
from realtime.server import hooks, metrics
from realtime.server.metrics import child


async def maintain() -> None:
    """Publish what was stored and never published, then deliver what Redis lost."""
    await database_sync_to_async(republish_pending)()
    await fanout.catch_up()


async def report_live_stats() -> None:
    """Write this worker's part of the admin's live view to Redis, then push the whole view to
    its sockets that watch it (realtime/broadcasting/live_stats.py)."""
    if not await live_stats.report(len(fanout.sockets)):
        return
    watchers = list(fanout.streams.subscribers(live_stats.TOPIC))
    if watchers:
        frame = Frame(await live_stats.stats_frame())
        for subscription in watchers:
            subscription.tell(frame)
        child(metrics.MESSAGES, "out", "stats").inc(len(watchers))


def schedule() -> None:
    """Ask the server to run maintain() and report_live_stats() when the layer is Redis (the
    in-memory one loses nothing and reaches no other process)."""
    if redis_host() is not None:
        hooks.every(MAINTENANCE_INTERVAL, maintain)
        hooks.every(live_stats.interval(), report_live_stats)
