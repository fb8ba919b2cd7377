"""What must happen once across processes, with processes really running at once, on the
database the run uses (SQLite, or PostgreSQL under TEST_DATABASE_URL: `make test` runs both).

- Publishing: four processes republish the same stored, unpublished broadcasts at once; each
  reaches the channel layer exactly once (the claim: published_at from NULL to now).
- Ids and commits: on PostgreSQL a broadcast can take its id before another and commit after
  it. A client that saw the later id and resumes from it still gets the earlier one.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from realtime.broadcasting.fanout import group_for
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


STORE_UNPUBLISHED = f"""
from datetime import timedelta
from django.utils import timezone
from realtime.models import Broadcast
past = timezone.now() - timedelta(seconds=30)
made = Broadcast.objects.bulk_create(
    Broadcast(message=f"stored {{n}}", sent_at=past) for n in range({STORED})
)
print(min(b.pk for b in made), max(b.pk for b in made))
"""

REPUBLISH = """
import sys
sys.stdin.readline()  # all processes start republishing at the same moment
from realtime.broadcasting.sending import republish_pending
total = 0
while (n := republish_pending(grace=0)):
    total += n
print(total)
"""


def test_stored_broadcasts_republished_by_four_processes_at_once_go_out_once_each(
    server_env, redis_server
):
    env = {**server_env, "REDIS_URL": redis_server.url}
    first, last = map(int, finished(shell(env, STORE_UNPUBLISHED)).split())

    async def scenario() -> Counter[int]:
        layer = RedisPubSubChannelLayer(hosts=[redis_server.url])
        channel = await layer.new_channel()
        await layer.group_add(group_for("everyone"), channel)
        workers = [shell(env, REPUBLISH, stdin=subprocess.PIPE) for _ in range(PROCESSES)]
        await asyncio.sleep(3)  # every process has imported Django and waits on stdin
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        published = [int(await asyncio.to_thread(finished, w)) for w in workers]
        seen: Counter[int] = Counter()
        try:
            while True:
                event = await asyncio.wait_for(layer.receive(channel), 2)
                seen[event["id"]] += 1
        except TimeoutError:
            pass
        await layer.flush()
        assert sum(published) == STORED, published
        return seen

    seen = asyncio.run(scenario())
    assert set(seen) == set(range(first, last + 1))
    assert set(seen.values()) == {1}, [i for i, n in seen.items() if n > 1]
    rows = server_query(
        env,
        "SELECT COUNT(*) FROM realtime_broadcast WHERE id BETWEEN %s AND %s "
        "AND published_at IS NULL",
        (first, last),
    )
    assert rows[0][0] == 0


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

    async def resume_after(after: int) -> list[dict]:
        async with ws_connect(url, client_tls) as socket_:
            await receive_json(socket_)  # welcome
            await socket_.send(json.dumps({"type": "resume", "after": after}))
            messages = []
            while (message := await receive_json(socket_))["type"] != "resumed":
                messages.append(message)
            return messages

    # A client saw the later broadcast (the held one is not committed: nobody can see it).
    seen = [m["id"] for m in asyncio.run(resume_after(later_id - 1))]
    assert later_id in seen and held_id not in seen
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
    time.sleep(0.2)
    # It resumes from the later id, the largest it has, and still gets the earlier one.
    # (Others published just before may come too: the client drops what it has.)
    replayed = {m["id"]: m for m in asyncio.run(resume_after(later_id))}
    assert held_id in replayed and replayed[held_id]["message"] == "committed last"
