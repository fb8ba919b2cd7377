"""Where a topic's history and offsets live: the database (as built) against Redis Streams.

    DATABASE_URL=postgres://... REDIS_URL=redis://127.0.0.1:6379/0 python -m bench.history_store

Times, side by side in one run, what each needs per message: storing it and giving it the
next offset (the database: insert, then the publish transaction that locks the topic's row;
Redis: XADD with an approximate MAXLEN, which numbers it, and a PUBLISH), and what a resume
costs (the last 100 messages of a topic). Prints a table for docs/reliability.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")
django.setup()

import redis  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from realtime.messaging import streams  # noqa: E402
from realtime.models import Topic, TopicMessage  # noqa: E402

MESSAGES = 1000
RESUMES = 200
DATA = {"status": "shipped", "order": 42, "note": "x" * 200}


def per_call_ms(calls: int, run) -> float:
    started = time.perf_counter()
    for n in range(calls):
        run(n)
    return (time.perf_counter() - started) * 1000 / calls


def database() -> tuple[float, float]:
    """store() publishes on commit (autocommit here): the insert, then the transaction that
    gives the offset and the frame. The channel layer's send, which both designs need to wake
    the workers, is left out (it is timed on its own below)."""
    topic = f"bench.db.{time.time_ns()}"
    streams.send_to_group = lambda group, event: None
    send = per_call_ms(MESSAGES, lambda n: streams.store(topic, DATA))
    last = Topic.objects.get(name=topic).last_offset
    resume = per_call_ms(RESUMES, lambda n: streams.entries(topic, last - 100, last))
    TopicMessage.objects.filter(topic=topic).delete()
    return send, resume


def redis_streams(client: redis.Redis) -> tuple[float, float]:
    key = f"bench:stream:{time.time_ns()}"
    payload = {"data": str(DATA)}

    def send(n: int) -> None:
        offset = client.xadd(key, payload, maxlen=100, approximate=True)
        client.publish("bench.topics", offset)

    sending = per_call_ms(MESSAGES, send)
    resume = per_call_ms(RESUMES, lambda n: client.xrevrange(key, count=100))
    client.delete(key)
    return sending, resume


def layer_send() -> float:
    """One group_send from sync code, as every publish makes (async_to_sync, pooled)."""
    from realtime.messaging.layer import send_to_group

    return per_call_ms(MESSAGES, lambda n: send_to_group("bench.topics", {"type": "x"}))


def main() -> int:
    layer = layer_send()
    call_command("migrate", verbosity=0)
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    runs = {"database": [], "redis": []}
    for _ in range(3):  # interleaved, so both see the same machine
        runs["database"].append(database())
        runs["redis"].append(redis_streams(client))
    print(f"database: {connection.vendor}; {MESSAGES} messages, {RESUMES} resumes of 100, 3 runs")
    print("| store | per message, ms (median) | resume of 100, ms (median) |")
    print("| --- | --- | --- |")
    for name, results in runs.items():
        send = statistics.median(r[0] for r in results)
        resume = statistics.median(r[1] for r in results)
        print(f"| {name} | {send:.3f} | {resume:.3f} |")
    print(f"channel layer group_send from sync code (both designs): {layer:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
