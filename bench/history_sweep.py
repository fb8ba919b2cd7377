"""How long the history sweep takes, and how long it holds the database at a time.

    .venv/bin/python -m bench.history_sweep        # SQLite, in a temporary file
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_sweep \
        .venv/bin/python -m bench.history_sweep    # an empty PostgreSQL database

Fills a fresh database with 100,000 published messages in 1,000 topics (100 each), then times
three sweeps (realtime.messaging.maintenance.sweep) with REALTIME_TOPIC_HISTORY_SIZE 50 and
REALTIME_TOPIC_HISTORY_TTL 3600: half of each topic's messages published two hours ago (50,000
rows past the age), then 30 more per topic (30,000 rows past the count), then nothing left to
delete. Prints the time of each sweep and of its statements (median, slowest) (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta

TOPICS, PER_TOPIC = 1000, 100

if "DATABASE_URL" not in os.environ:
    os.environ["DJANGO_DB_PATH"] = os.path.join(tempfile.mkdtemp(), "sweep.sqlite3")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from realtime.messaging import maintenance, streams  # noqa: E402
from realtime.models import Topic, TopicMessage  # noqa: E402


def fill(per_topic: int, first: int, age: timedelta | None = None) -> None:
    """`per_topic` published messages in each topic from offset `first`; the first half of
    them `age` old when given."""
    now = timezone.now()
    rows = []
    for t in range(TOPICS):
        for n in range(per_topic):
            old = age is not None and n < per_topic // 2
            published = now - age if old else now
            rows.append(
                TopicMessage(
                    topic=f"bench.{t}",
                    offset=first + n,
                    data={"n": n},
                    frame='{"type":"message"}',
                    published_at=published,
                )
            )
    TopicMessage.objects.bulk_create(rows, batch_size=5000)
    Topic.objects.bulk_create(
        [Topic(name=f"bench.{t}", last_offset=first + per_topic - 1) for t in range(TOPICS)],
        update_conflicts=True,
        unique_fields=["name"],
        update_fields=["last_offset"],
    )
    with connection.cursor() as cursor:  # the statistics autovacuum would have gathered
        cursor.execute("ANALYZE")


def timed_sweep(label: str) -> None:
    durations: list[float] = []
    real = streams.delete_some

    def delete_some(rows):
        started = time.perf_counter()
        try:
            return real(rows)
        finally:
            durations.append(time.perf_counter() - started)

    streams.delete_some = delete_some
    before = TopicMessage.objects.count()
    started = time.perf_counter()
    deleted = asyncio.run(maintenance.sweep())
    took = time.perf_counter() - started
    streams.delete_some = real
    median, slowest = statistics.median(durations) * 1000, max(durations) * 1000
    print(
        f"| {label} | {before:,} | {deleted:,} | {took:.2f} s | {median:.1f} ms, {slowest:.1f} ms |"
    )


def main() -> None:
    settings.REALTIME_TOPIC_HISTORY_SIZE = 50
    settings.REALTIME_TOPIC_HISTORY_TTL = 3600
    call_command("migrate", verbosity=0)
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(f"{engine}, {TOPICS:,} topics, batches of {streams.SWEEP_BATCH}", file=sys.stderr)
    print("| sweep | rows before | deleted | took | statement: median, slowest |")
    print("| --- | ---: | ---: | ---: | ---: |")
    fill(PER_TOPIC, 1, timedelta(hours=2))
    timed_sweep("half of every topic past the age")
    fill(30, PER_TOPIC + 1)
    timed_sweep("30 per topic past the count")
    timed_sweep("nothing to delete")
    TopicMessage.objects.filter(topic__startswith="bench.").delete()
    Topic.objects.filter(name__startswith="bench.").delete()


if __name__ == "__main__":
    main()
