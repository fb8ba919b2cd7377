"""What must happen once across processes, with processes really running at once, on the
database the run uses (SQLite, or PostgreSQL under TEST_DATABASE_URL: `make test` runs both).

- Publishing: four processes publish the same stored, unpublished messages at once; each
  reaches the channel layer exactly once (the claim: published_at from NULL to now), and the
  offsets they get are 1, 2, 3, ... with no gap and no repeat (the stream's row lock).
- Ids and commits: on PostgreSQL a broadcast can take its id before another and commit after
  it. Offsets are given at publish, in commit order: a client that saw the later one and
  resumes from its offset still gets the earlier one, once.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from realtime.messaging.streams import TOPICS_GROUP
from tests.helpers import (
    PYTHON,
    ROOT,
    TEST_DATABASE_URL,
    free_port,
    receive_json,
    server_query,
    wait_until,
    ws_connect,
)

pytestmark = pytest.mark.e2e

PROCESSES = 4
STORED = 120


def shell(env: dict[str, str], code: str, **popen) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finished(process: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


TOPIC = "orders.7"
STORE_UNPUBLISHED = f"""
from datetime import timedelta
from django.utils import timezone
from realtime.models import TopicMessage
past = timezone.now() - timedelta(seconds=30)
made = TopicMessage.objects.bulk_create(
    TopicMessage(topic="{TOPIC}", data={{"n": n}}, sent_at=past) for n in range({STORED})
)
print(min(m.pk for m in made), max(m.pk for m in made))
"""

REPUBLISH = """
import sys
from realtime.messaging.streams import republish_pending
print("ready", flush=True)
sys.stdin.readline()  # all processes start republishing at the same moment
total = 0
while (n := republish_pending(grace=0)):
    total += n
print(total)
"""


def test_stored_messages_published_by_four_processes_at_once_go_out_once_each_in_order(
    server_env, redis_server
):
    env = {**server_env, "REDIS_URL": redis_server.url}
    first, last = map(int, finished(shell(env, STORE_UNPUBLISHED)).split())

    async def scenario() -> Counter[int]:
        layer = RedisPubSubChannelLayer(hosts=[redis_server.url])
        channel = await layer.new_channel()
        await layer.group_add(TOPICS_GROUP, channel)
        workers = [shell(env, REPUBLISH, stdin=subprocess.PIPE) for _ in range(PROCESSES)]
        for worker in workers:  # every process has imported Django and waits on stdin
            ready = await asyncio.to_thread(worker.stdout.readline)
            assert ready == "ready\n", ready + worker.stderr.read()[-3000:]
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        published = [int(await asyncio.to_thread(finished, w)) for w in workers]
        seen: Counter[int] = Counter()
        try:
            while True:
                event = await asyncio.wait_for(layer.receive(channel), 2)
                seen[event["offset"]] += 1
        except TimeoutError:
            pass
        await layer.flush()
        assert sum(published) == STORED, published
        return seen

    seen = asyncio.run(scenario())
    assert set(seen) == set(range(1, STORED + 1))
    assert set(seen.values()) == {1}, [i for i, n in seen.items() if n > 1]
    rows = server_query(
        env,
        'SELECT COUNT(*), COUNT(DISTINCT "offset"), MIN("offset"), MAX("offset") '
        "FROM realtime_topicmessage WHERE id BETWEEN %s AND %s AND published_at IS NOT NULL",
        (first, last),
    )
    count, distinct, low, high = rows[0]
    # Offsets 1..120 went out once each; the history keeps the last 100 (REALTIME_TOPIC_
    # HISTORY_SIZE) at least, older ones deleted as later ones were published.
    assert count == distinct == high - low + 1 and high == STORED and low <= STORED - 100 + 1


HOLD_A_BROADCAST = """
import sys
from django.db import transaction
from realtime import broadcast
with transaction.atomic():
    held = broadcast.send("committed last")
    print(held.pk, flush=True)
    sys.stdin.readline()  # the test sends another broadcast meanwhile, then says go
"""


@pytest.mark.skipif(
    not TEST_DATABASE_URL,
    reason="SQLite has one writer: a second broadcast cannot be stored while the first's "
    "transaction is open (the PostgreSQL run of `make test` runs this)",
)
def test_an_id_taken_first_but_committed_last_still_reaches_a_resuming_client(
    start, server_env, redis_server, client_tls
):
    env = {**server_env, "REDIS_URL": redis_server.url}
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "1", "--port", str(port)]
    start(serve, port, REDIS_URL=redis_server.url)
    url = f"wss://localhost:{port}/ws/"
    holder = shell(env, HOLD_A_BROADCAST, stdin=subprocess.PIPE)
    held_id = int(holder.stdout.readline())
    later = shell(env, 'from realtime import broadcast; print(broadcast.send("stored second").pk)')
    later_id = int(finished(later))
    assert later_id > held_id

    async def resume_since(offset: int | None) -> tuple[int, list[dict]]:
        """The broadcasts a client that has everything up to `offset` gets, and the offset."""
        async with ws_connect(url, client_tls) as socket_:
            welcome = await receive_json(socket_)
            epoch = welcome["broadcasts"]["epoch"]
            since = {"epoch": epoch, "offset": welcome["broadcasts"]["offset"] - 1}
            if offset is not None:
                since["offset"] = offset
            await socket_.send(json.dumps({"type": "resume", "since": since}))
            messages = []
            while (message := await receive_json(socket_))["type"] != "resumed":
                messages.append(message)
            return messages

    # A client saw the later broadcast (the held one is not committed: nobody can see it).
    seen = asyncio.run(resume_since(None))
    assert [m["id"] for m in seen] == [later_id]
    holder.stdin.write("go\n")
    holder.stdin.flush()
    finished(holder)
    wait_until(
        lambda: (
            server_query(
                env, "SELECT published_at FROM realtime_broadcast WHERE id = %s", (held_id,)
            )[0][0]
            is not None
        ),
        "the held broadcast is published once committed",
        10,
    )
    # It resumes from the later one's offset, and gets the earlier one, once, and nothing else.
    replayed = asyncio.run(resume_since(seen[0]["offset"]))
    assert [(m["id"], m["message"]) for m in replayed] == [(held_id, "committed last")]
    assert replayed[0]["offset"] == seen[0]["offset"] + 1
