"""What the admin's live view shows (realtime/admin.py, "Live"), gathered from every worker of
every host through Redis, and pushed to the staff sockets that watch it.

Every REALTIME_LIVE_STATS_INTERVAL seconds each worker (realtime.server.hooks) writes its part
to Redis in one pipeline (`write_report`): its open sockets, what each message it delivered
reached and how late, the handshakes it refused. A worker with sockets on the staff-only topic
`realtime.stats` then reads the whole picture (`snapshot()`) and sends it to them as one
`stats` frame. Messages to one user show to whom, not what; topic messages show the pattern
they were registered with, not the topic's name. What the view shows: docs/operations.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import redis
from channels.db import database_sync_to_async
from django.utils import timezone

from realtime import wire
from realtime.conf import conf
from realtime.messaging import topic_rules
from realtime.messaging.redis_client import async_client, sync_client
from realtime.messaging.streams import BROADCASTS
from realtime.models import TopicMessage
from realtime.server import prometheus
from realtime.server.worker import worker_id

logger = logging.getLogger("realtime.ops.live_stats")

TOPIC = "realtime.stats"
WORKERS_KEY = "realtime:live:workers"
REACH_KEY = "realtime:live:reach:"
REFUSED_KEY = "realtime:live:refused:"
HOUR = 3600  # what the view looks back over
BUCKET = 60  # seconds of refusals per hash
MESSAGES_SHOWN = 50
USER_PREFIX = "$user."


def interval() -> int:
    return int(conf.REALTIME_LIVE_STATS_INTERVAL)


class Recorder:
    """This worker's deliveries since its last report: (stream, offset) -> [sockets, latency]."""

    def __init__(self) -> None:
        self.reached: dict[tuple[str, int], list[float]] = {}
        self.enabled = False  # from the first report on: else nothing would take them

    def delivered(self, name: str, offset: int, sockets: int, latency: float | None) -> None:
        if not self.enabled or not sockets:
            return
        key = (name, offset)
        if key not in self.reached and len(self.reached) >= MESSAGES_SHOWN:
            del self.reached[next(iter(self.reached))]  # the oldest: the view shows the newest
        counts = self.reached.setdefault(key, [0, -1.0])
        counts[0] += sockets
        if latency is not None:
            counts[1] = max(counts[1], latency)

    def take(self) -> dict[tuple[str, int], list[float]]:
        reached, self.reached = self.reached, {}
        return reached


recorder = Recorder()


# --- Each worker, every interval --------------------------------------------------------------

_client: Any = None


async def report(sockets: int) -> bool:
    """Write this worker's part to Redis (its open `sockets`); whether it could."""
    global _client
    recorder.enabled = True
    if _client is None:
        _client = async_client()
    if _client is None:
        return False
    try:
        await write_report(_client, sockets)
    except (redis.RedisError, OSError) as exc:
        logger.info("Could not report live statistics to Redis: %s", exc)
        return False
    return True


async def stats_frame() -> str:
    return wire.stats(TOPIC, await database_sync_to_async(snapshot)())


async def write_report(client: Any, sockets: int) -> None:
    worker, pid = worker_id(), os.getpid()  # a rolling restart runs two of one worker a moment
    entry = {"host": socket.gethostname(), "worker": worker, "pid": pid, "sockets": sockets}
    pipeline = client.pipeline(transaction=False)
    pipeline.hset(WORKERS_KEY, f"{worker}:{pid}", json.dumps({**entry, "at": time.time()}))
    pipeline.expire(WORKERS_KEY, 3 * interval() + 1)
    for (name, offset), (count, latency) in recorder.take().items():
        key = f"{REACH_KEY}{name}:{offset}"
        pipeline.hincrby(key, "sockets", int(count))
        if latency >= 0:
            pipeline.hset(key, f"latency:{worker}", f"{latency:.6f}")
        pipeline.expire(key, HOUR + BUCKET)
    refused = prometheus.take_refused()
    if refused:
        key = f"{REFUSED_KEY}{int(time.time() // BUCKET)}"
        for reason, count in refused.items():
            pipeline.hincrby(key, reason, count)
        pipeline.expire(key, HOUR + BUCKET)  # the window, and the bucket it started in
    try:
        await pipeline.execute()
    except BaseException:
        prometheus.give_back_refused(refused)  # counted at the next report instead
        raise


# --- The picture, for the admin view and the stats frames --------------------------------------


def snapshot() -> dict[str, Any]:
    """The workers now, the messages of the last hour with their reach, the refusals of the
    last hour; without Redis, only the messages."""
    client = sync_client()
    workers = read_workers(client) if client is not None else []
    hosts: Counter[str] = Counter()
    for entry in workers:
        hosts[entry["host"]] += entry["sockets"]
    return {
        "time": timezone.now().isoformat(),
        "redis": client is not None,
        "hosts": [{"host": host, "sockets": count} for host, count in sorted(hosts.items())],
        "workers": workers,
        "messages": recent_messages(client),
        "refused": read_refused(client) if client is not None else [],
    }


def read_workers(client: Any) -> list[dict[str, Any]]:
    """The workers that reported within three intervals; older entries are removed."""
    oldest = time.time() - 3 * interval()
    fresh, stale = [], []
    for field, value in client.hgetall(WORKERS_KEY).items():
        entry = json.loads(value)
        (fresh if entry.get("at", 0) >= oldest else stale).append((field, entry))
    if stale:
        client.hdel(WORKERS_KEY, *(field for field, _ in stale))
    entries = [{k: v for k, v in entry.items() if k != "at"} for _, entry in fresh]
    return sorted(entries, key=lambda entry: (entry["host"], entry["worker"], entry["pid"]))


def recent_messages(client: Any) -> list[dict[str, Any]]:
    since = timezone.now() - timedelta(seconds=HOUR)
    rows = list(
        TopicMessage.objects.filter(published_at__gte=since)
        .select_related("broadcast")
        .order_by("-published_at", "-id")[:MESSAGES_SHOWN]
    )
    reach = read_reach(client, rows) if client is not None else [{}] * len(rows)
    return [described(row, counts) for row, counts in zip(rows, reach, strict=True)]


def read_reach(client: Any, rows: list[TopicMessage]) -> list[dict[str, str]]:
    pipeline = client.pipeline(transaction=False)
    for row in rows:
        pipeline.hgetall(f"{REACH_KEY}{row.topic}:{row.offset}")
    return [{_text(k): _text(v) for k, v in found.items()} for found in pipeline.execute()]


def described(row: TopicMessage, counts: dict[str, str]) -> dict[str, Any]:
    latencies = [float(v) for k, v in counts.items() if k.startswith("latency:")]
    entry = {
        "offset": row.offset,
        "published_at": row.published_at.isoformat() if row.published_at else None,
        "sockets": int(counts.get("sockets", 0)),
        "latency_ms": round(max(latencies) * 1000, 1) if latencies else None,
    }
    if row.topic == BROADCASTS and row.broadcast is not None:
        audience = row.broadcast.get_audience_display()
        return {**entry, "kind": "broadcast", "what": row.broadcast.message[:200], "to": audience}
    if row.topic.startswith(USER_PREFIX):
        user = row.topic.removeprefix(USER_PREFIX)
        return {**entry, "kind": "user", "what": f"event {row.event}", "to": f"user #{user}"}
    found = topic_rules.match(row.topic)
    pattern = found[0].pattern if found is not None else "(no longer registered)"
    return {**entry, "kind": "topic", "what": f"event {row.event}", "to": pattern}


def read_refused(client: Any) -> list[dict[str, Any]]:
    now = int(time.time() // BUCKET)
    pipeline = client.pipeline(transaction=False)
    for back in range(HOUR // BUCKET):
        pipeline.hgetall(f"{REFUSED_KEY}{now - back}")
    totals: Counter[str] = Counter()
    for found in pipeline.execute():
        for reason, count in found.items():
            totals[_text(reason)] += int(count)
    return [{"reason": reason, "count": count} for reason, count in totals.most_common()]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
