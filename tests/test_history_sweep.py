"""The history sweep (realtime.messaging.maintenance): every stream's messages beyond its
window (count and age) are deleted, whether or not the stream publishes again; what the window
promises stays. In process, then on `serve --workers 2` run past its interval."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from realtime.messaging import maintenance, streams
from realtime.models import Topic, TopicMessage
from tests.helpers import (
    PYTHON,
    free_port,
    receive_json,
    run_in_shell,
    server_query,
    wait_until,
    ws_connect,
)


@pytest.fixture(autouse=True)
def _fresh_sweeper(monkeypatch):
    monkeypatch.setattr(maintenance, "sweeper", maintenance.Sweeper())


def send(name: str, count: int) -> None:
    for n in range(count):
        streams.store(name, {"n": n})  # autocommit: published at once


def offsets(name: str) -> list[int]:
    rows = TopicMessage.objects.filter(topic=name).order_by("offset")
    return list(rows.values_list("offset", flat=True))


def age(name: str, seconds: float) -> None:
    """Make every message of `name` look published `seconds` ago."""
    then = timezone.now() - timedelta(seconds=seconds)
    TopicMessage.objects.filter(topic=name).update(published_at=then)


def sweep() -> int:
    return asyncio.run(maintenance.sweep())


@pytest.mark.django_db(transaction=True)
def test_it_keeps_each_streams_newest_window_count_even_of_streams_publishing_no_more(settings):
    settings.REALTIME_TOPIC_HISTORY_SIZE = 5
    settings.REALTIME_RESUME_MAX_COUNT = 7
    send("news.few", 3)  # fewer than PRUNE_EVERY: publish() never pruned these
    send("news.many", 12)
    send(streams.user_stream(1), 9)
    send(streams.BROADCASTS, 10)
    assert len(offsets("news.many")) == 12  # what there was before the sweep
    deleted = sweep()
    assert offsets("news.few") == [1, 2, 3]
    assert offsets("news.many") == list(range(8, 13))
    assert offsets(streams.user_stream(1)) == list(range(5, 10))
    assert offsets(streams.BROADCASTS) == list(range(4, 11))  # the broadcasts' own count
    assert deleted == 7 + 4 + 3
    assert sweep() == 0  # nothing left to delete


@pytest.mark.django_db(transaction=True)
def test_it_deletes_messages_older_than_their_streams_age_and_keeps_the_younger(settings):
    settings.REALTIME_TOPIC_HISTORY_TTL = 60
    settings.REALTIME_RESUME_MAX_AGE = 600
    send("news.old", 2)
    send("news.young", 2)
    send(streams.user_stream(2), 2)
    send(streams.BROADCASTS, 2)
    for name in ("news.old", streams.user_stream(2), streams.BROADCASTS):
        age(name, 120)  # past the topics' age, within the broadcasts'
    unpublished = TopicMessage.objects.create(topic="news.old", data={})  # republished later
    TopicMessage.objects.filter(pk=unpublished.pk).update(sent_at=timezone.now() - timedelta(1))
    assert sweep() == 4
    assert offsets("news.old") == [None]
    assert offsets(streams.user_stream(2)) == []
    assert offsets("news.young") == [1, 2]
    assert offsets(streams.BROADCASTS) == [1, 2]
    assert Topic.objects.get(name="news.old").last_offset == 2  # offsets go on, no reuse


@pytest.mark.django_db(transaction=True)
def test_it_deletes_in_batches(settings, monkeypatch):
    settings.REALTIME_TOPIC_HISTORY_SIZE = 2
    monkeypatch.setattr(streams, "SWEEP_BATCH", 4)
    monkeypatch.setattr(streams, "STREAMS_PER_TRIM", 2)
    statements: list[int] = []
    real = streams.delete_some

    def delete_some(rows):
        statements.append(real(rows))
        return statements[-1]

    monkeypatch.setattr(streams, "delete_some", delete_some)
    for name in "abc":
        send(f"news.{name}", 7)
    assert sweep() == 15
    assert [len(offsets(f"news.{name}")) for name in "abc"] == [2, 2, 2]
    # Nothing expired (two statements); then news.a and news.b together, and news.c.
    assert statements == [0, 0, 4, 4, 2, 4, 1]


@pytest.mark.django_db(transaction=True)
def test_a_later_sweep_trims_only_the_streams_published_since_the_last(settings, monkeypatch):
    send("news.quiet", 3)
    send("news.busy", 3)
    sweep()
    age("news.quiet", 120)  # published before the last sweep (and its overlap), still kept
    send("news.busy", 1)
    looked_at: list[str] = []
    monkeypatch.setattr(streams, "trim_some", lambda names: looked_at.extend(names) or 0)
    sweep()
    assert looked_at == ["news.busy"]
    maintenance.sweeper.last_began = None  # a worker's first sweep looks at every stream left
    looked_at.clear()
    sweep()
    assert looked_at == ["news.busy", "news.quiet"]


def test_one_worker_sweeps_per_interval_and_a_worker_without_redis_always_does(
    settings, redis_server
):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_server.url}]},
        }
    }
    settings.REALTIME_HISTORY_SWEEP_INTERVAL = 1

    async def turns():
        one, two = maintenance.Sweeper(), maintenance.Sweeper()
        loop = asyncio.get_running_loop()
        first, taken = [await one.my_turn(), await two.my_turn(), await one.my_turn()], loop.time()
        while not await two.my_turn():  # free again once most of the interval has passed
            await asyncio.sleep(0.02)
        waited = loop.time() - taken
        second = [True, await one.my_turn()]
        for sweeper in (one, two):
            await sweeper.client.aclose()
        return first, second, waited

    first, second, waited = asyncio.run(turns())
    assert (first, second) == ([True, False, False], [True, False])
    assert 0.8 <= waited < 5  # the lock lasts most of the interval (0.9 s), then frees itself
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert asyncio.run(maintenance.Sweeper().my_turn()) is True


# --- On a real server, run past the sweep's interval -------------------------------------------

TTL = 10  # seconds: time to check what the sweep kept, and to replay it, within it
HISTORY = {
    "REALTIME_TOPIC_HISTORY_SIZE": "5",
    "REALTIME_TOPIC_HISTORY_TTL": str(TTL),
    "REALTIME_RESUME_MAX_COUNT": "5",
    "REALTIME_RESUME_MAX_AGE": str(TTL),
    "REALTIME_HISTORY_SWEEP_INTERVAL": "1",
}


def send_everywhere(env: dict, tag: str) -> str:
    """3 messages to news.few-TAG, 12 to news.many-TAG, 4 to a user, 8 broadcasts: none a
    multiple of PRUNE_EVERY, so publish() pruned nothing. Returns the user's stream."""
    code = (
        "from django.contrib.auth import get_user_model\n"
        "from realtime import broadcast, topics\n"
        f"alice, _ = get_user_model().objects.get_or_create(username='sweep-{tag}')\n"
        f"for n in range(3): topics.send('news.few-{tag}', {{'n': n}})\n"
        f"for n in range(12): topics.send('news.many-{tag}', {{'n': n}})\n"
        "for n in range(4): topics.send_to_user(alice, {'n': n})\n"
        "for n in range(8): broadcast.send(f'b{n}')\n"
        "print(alice.pk)\n"
    )
    return f"$user.{run_in_shell(env, code).split()[-1]}"


def stored(env: dict, names: list[str]) -> dict[str, list[int]]:
    sql = 'SELECT topic, "offset" FROM realtime_topicmessage ORDER BY topic, "offset"'
    found: dict[str, list[int]] = {name: [] for name in names}
    for topic, offset in server_query(env, sql):
        if topic in found:
            found[topic].append(offset)
    return found


async def replayed(url: str, tls, topic: str, epoch: str, after: int) -> list[dict]:
    async with ws_connect(url, tls) as socket_:
        await receive_json(socket_)  # welcome
        since = {"epoch": epoch, "offset": after}
        await socket_.send(json.dumps({"type": "subscribe", "topic": topic, "since": since}))
        messages = [await receive_json(socket_)]
        with contextlib.suppress(TimeoutError):
            while len(messages) < 13:
                messages.append(await receive_json(socket_, timeout=0.5))
        return messages


def test_a_served_sweep_bounds_every_stream_and_a_resume_within_the_window_still_works(
    start, redis_server, server_env, client_tls
):
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(serve, port, REDIS_URL=redis_server.url, **HISTORY)
    env = {**server_env, "REDIS_URL": redis_server.url}
    tag = uuid.uuid4().hex[:8]
    began = time.monotonic()  # every message below is younger than the time since
    user = send_everywhere(env, tag)
    few, many = f"news.few-{tag}", f"news.many-{tag}"
    names = [few, many, user, "$broadcasts"]
    last = server_query(env, "SELECT last_offset FROM realtime_topic WHERE name = '$broadcasts'")

    def bounded() -> bool:
        now = stored(env, names)
        return len(now[many]) == 5 and len(now["$broadcasts"]) == 5

    wait_until(bounded, "the sweep kept the newest 5 of news.many and of the broadcasts", 8)
    kept = stored(env, names)
    epoch = server_query(env, "SELECT epoch FROM realtime_topic WHERE name = %s", (many,))[0][0]
    messages = asyncio.run(replayed(f"wss://localhost:{port}/ws/", client_tls, many, epoch, 7))
    in_window = time.monotonic() - began < TTL
    wait_until(
        lambda: not any(stored(env, names).values()),
        f"every stream's messages older than {TTL} s deleted",
        TTL + 10,
    )
    assert in_window  # the checks above ran while all five were promised
    assert kept[many] == [8, 9, 10, 11, 12]
    assert kept["$broadcasts"] == list(range(last[0][0] - 4, last[0][0] + 1))
    assert kept[few] == [1, 2, 3] and kept[user] == [1, 2, 3, 4]
    assert messages[0]["type"] == "subscribed"
    assert [m["offset"] for m in messages[1:]] == [8, 9, 10, 11, 12]
    assert "Traceback" not in server.log()
