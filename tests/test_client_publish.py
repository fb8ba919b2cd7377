"""Clients publishing, in one process (the in-memory layer, Channels' test socket): a flood of
10,000 publishes from one socket, ephemeral messages dropped for a socket that is behind and
never counted as lost, receipts forgotten past REALTIME_PUBLISH_ID_TTL, and the rate per
publisher and topic without Redis. Across workers, with Redis: tests/test_publish_e2e.py."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from project.demo.topics import may_chat
from realtime import topics
from realtime.common.close_codes import POLICY_VIOLATION
from realtime.messaging import client_publish, topic_rules
from realtime.messaging.client_publish import Publisher, PublishRate
from realtime.messaging.delivery import Stream, Streams, Subscription
from realtime.messaging.fanout import Recipient
from realtime.messaging.streams import EPHEMERAL_EVENT
from realtime.models import PublishReceipt, TopicMessage
from realtime.ops import metrics
from realtime.websocket import publishing
from realtime.websocket.calls import HandlerThreads
from tests.test_authorization import ask, opened, signed_in


@pytest.fixture(autouse=True)
def _publish_threads(monkeypatch):
    """Publish threads of the test's own; after it, each closes the database connection it
    opened (PostgreSQL drops the test database only when no session is left on it), then
    ends."""
    monkeypatch.setattr(publishing, "_threads", HandlerThreads(2, name="test-publish"))
    yield
    threads = publishing._threads
    barrier = threading.Barrier(threads.size)  # one close for each thread, not two for one

    def close() -> None:
        barrier.wait(10)
        connections.close_all()

    for closing in [threads.submit(close) for _ in range(threads.size)]:
        closing.result(15)
    threads.shutdown()


@pytest.mark.django_db(transaction=True)
def test_ten_thousand_publishes_from_one_socket_store_the_topics_burst_and_close_it():
    alice = signed_in("alice")

    async def scenario():
        socket_ = await opened(alice)
        for index in range(10_000):
            await socket_.send_json_to(
                {"type": "publish", "topic": "chat.flood", "id": f"f{index}", "data": {"text": "x"}}
            )
        answers = []
        while True:
            output = await socket_.receive_output(timeout=10)
            if output["type"] == "websocket.close":
                return answers, output["code"]
            answers.append(output.get("text", ""))

    answers, code = asyncio.run(scenario())
    assert code == POLICY_VIOLATION  # the socket's message budget, long before 10,000
    stored = TopicMessage.objects.filter(topic="chat.flood").count()
    assert stored == 10  # REALTIME_TOPIC_PUBLISH_BURST: the rest came faster than its rate
    assert sum('"code":"rate_limited"' in answer for answer in answers) >= 10
    assert len(answers) < 100


class Behind:
    """A socket's frames as the server floor has them: `waiting` bytes not yet sent."""

    def __init__(self, waiting: int) -> None:
        self.waiting, self.sent = waiting, []

    def unsent(self) -> int:
        return self.waiting

    @staticmethod
    def prepare(text: str) -> str:
        return text

    def send_prepared(self, prepared: str) -> None:
        self.sent.append(prepared)


class Socket:
    def __init__(self, waiting: int, socket_id: str) -> None:
        self.scope = {"extensions": {"realtime.websocket": Behind(waiting)}}
        self.socket_id = socket_id
        self.recipient = Recipient(self)

    @property
    def sent(self) -> list[str]:
        return self.scope["extensions"]["realtime.websocket"].sent


def counted(outcome: str) -> float:
    return metrics.EPHEMERAL.labels(outcome)._value.get()


@pytest.mark.parametrize("backlog", [0, 16 * 1024])
def test_an_ephemeral_message_is_dropped_for_a_socket_behind_and_not_sent_back(settings, backlog):
    settings.REALTIME_EPHEMERAL_BACKLOG = backlog
    streams = Streams()
    stream = streams.streams["chat.x"] = Stream("chat.x")
    stream.delivered = 0
    keeping_up = Socket(0, "a")
    behind = Socket(backlog + 1, "b")
    replaying = Socket(0, "c")
    sender = Socket(0, "d")
    for socket_ in (keeping_up, behind, replaying, sender):
        stream.subscriptions[socket_] = Subscription(socket_.recipient, "chat.x", "chat.x", None, 0)
    stream.subscriptions[replaying].hold()  # its history is being replayed: it is behind
    delivered, dropped = counted("delivered"), counted("dropped")
    lost = metrics.DELIVERIES.labels("topic")._value.get()

    streams.receive_ephemeral(
        {"type": EPHEMERAL_EVENT, "topic": "chat.x", "text": "t", "skip": "d"}
    )

    assert keeping_up.sent == ["t"]
    assert behind.sent == replaying.sent == sender.sent == []
    assert stream.subscriptions[replaying].held == []  # not kept for after the replay either
    assert counted("delivered") - delivered == 1 and counted("dropped") - dropped == 2
    assert metrics.DELIVERIES.labels("topic")._value.get() == lost  # not a stored message
    assert stream.delivered == 0  # no offset moved


@pytest.mark.django_db(transaction=True)
def test_receipts_are_forgotten_past_the_id_ttl_and_the_id_is_new_again(settings):
    settings.REALTIME_PUBLISH_ID_TTL = 60
    publisher = Publisher("user:1", {"id": 1, "username": "alice"})
    sent = client_publish.digest("chat.a", {"text": "hi"}, "message")
    first = client_publish.store_new(publisher, "chat.a", "x1", sent, {"text": "hi"}, "message")
    assert client_publish.repeat_of(publisher, "chat.a", "x1", sent).offset == first.offset
    other = Publisher("user:2", {"id": 2, "username": "bob"})
    assert client_publish.repeat_of(other, "chat.a", "x1", sent) is None  # ids are per user
    PublishReceipt.objects.update(created_at=timezone.now() - timedelta(seconds=61))
    assert client_publish.forget_expired_receipts() == 1
    assert client_publish.repeat_of(publisher, "chat.a", "x1", sent) is None
    again = client_publish.store_new(publisher, "chat.a", "x1", sent, {"text": "hi"}, "message")
    assert again.offset == first.offset + 1 and not again.repeated


@pytest.mark.django_db(transaction=True)
def test_the_history_sweep_deletes_expired_receipts(settings):
    from realtime.messaging import maintenance

    settings.REALTIME_PUBLISH_ID_TTL = 1
    publisher = Publisher("socket:s", None)
    for index in range(3):
        sent = client_publish.digest("wall", "n", "message")
        client_publish.store_new(publisher, "wall", f"i{index}", sent, "n", "message")
    PublishReceipt.objects.filter(client_id="i0").update(
        created_at=timezone.now() - timedelta(seconds=2)
    )
    asyncio.run(maintenance.sweep())
    assert sorted(PublishReceipt.objects.values_list("client_id", flat=True)) == ["i1", "i2"]


def test_without_redis_the_rate_is_a_bucket_per_publisher_and_topic(settings, monkeypatch):
    settings.REALTIME_TOPIC_PUBLISH_RATE, settings.REALTIME_TOPIC_PUBLISH_BURST = 1, 3
    monkeypatch.setattr(client_publish, "async_client", lambda: None)
    rate = PublishRate()

    async def takes(who: str, topic: str, count: int) -> list[bool]:
        return [await rate.allows(who, topic) for _ in range(count)]

    assert asyncio.run(takes("user:1", "chat.a", 5)) == [True] * 3 + [False] * 2
    assert asyncio.run(takes("user:1", "chat.b", 1)) == [True]  # another topic
    assert asyncio.run(takes("user:2", "chat.a", 1)) == [True]  # another publisher
    monkeypatch.setattr(client_publish, "REMEMBERED_BUCKETS", 2)
    asyncio.run(takes("user:3", "chat.a", 1))
    assert len(rate.buckets) == 2  # bounded: the oldest forgotten


@pytest.fixture
def saved_registry():
    saved = dict(topic_rules.registrations)
    yield
    topic_rules.registrations.clear()
    topic_rules.registrations.update(saved)


@pytest.mark.django_db(transaction=True)
def test_a_publish_function_that_fails_is_logged_and_answered_internal(caplog, saved_registry):
    def broken(user, data, room):
        raise RuntimeError("secret detail")

    topics.register("chat.<slug:room>", authorize=may_chat, publish=broken)
    alice = signed_in("alice")

    async def scenario():
        socket_ = await opened(alice)
        await socket_.send_json_to(
            {"type": "publish", "topic": "chat.a", "id": "i", "data": {"text": "x"}}
        )
        answer = await socket_.receive_json_from()
        pong = await ask(socket_, {"type": "ping"})
        await socket_.disconnect()
        return answer, pong

    answer, pong = asyncio.run(scenario())
    assert answer["code"] == "internal" and "secret" not in answer["detail"]
    assert "secret detail" in caplog.text  # with its traceback, in the server's log
    assert pong["type"] == "pong"  # the app's failure does not end the socket


@pytest.mark.django_db(transaction=True)
def test_a_slow_publish_function_holds_its_own_thread_not_the_workers_database_thread(
    settings, saved_registry
):
    settings.REALTIME_RPC_TIMEOUT = 1
    release = threading.Event()

    def slow(user, data, room):  # an app's publish that calls a slow moderation service
        if room == "slow":
            release.wait(20)
        return data

    topics.register("chat.<slug:room>", authorize=may_chat, publish=slow)
    alice, bob = signed_in("alice"), signed_in("bob")
    message = {"type": "publish", "topic": "chat.slow", "id": "s1", "data": {"text": "x"}}

    async def scenario():
        a, b = await opened(alice), await opened(bob)
        await a.send_json_to(message)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        subscribed = await ask(b, {"type": "subscribe", "topic": "news.x"})
        subscribe_took = time.monotonic() - started
        timed_out = await a.receive_json_from()
        busy = await ask(a, message)  # its first publish still runs in its thread
        a2 = await opened(alice)  # another socket of hers: the same publisher
        busy_too = await ask(a2, {**message, "id": "s2"})
        other = {"type": "publish", "topic": "chat.fast", "id": "b1", "data": {"text": "y"}}
        bobs = await ask(b, other)  # bob has threads left
        release.set()
        await asyncio.sleep(0.5)
        again = await ask(a, message)
        await a.disconnect(), await a2.disconnect(), await b.disconnect()
        return subscribed, subscribe_took, timed_out, (busy, busy_too), bobs, again

    subscribed, subscribe_took, timed_out, busy, bobs, again = asyncio.run(scenario())
    assert subscribed["type"] == "subscribed" and subscribe_took < 0.5
    assert (timed_out["code"], timed_out["id"]) == ("timeout", "s1")
    assert [answer["code"] for answer in busy] == ["unavailable", "unavailable"]
    assert bobs == {"type": "published", "topic": "chat.fast", "id": "b1", "offset": 1}
    assert again == {"type": "published", "topic": "chat.slow", "id": "s1", "offset": 1}
    assert TopicMessage.objects.filter(topic="chat.slow").count() == 1
    assert publishing.shares.slots == {} and not publishing.shares.users  # nothing kept


def test_spreading_over_topic_names_meets_the_publishers_rate_over_all_topics(
    settings, monkeypatch
):
    settings.REALTIME_TOPIC_PUBLISH_RATE, settings.REALTIME_TOPIC_PUBLISH_BURST = 100, 100
    settings.REALTIME_PUBLISHER_RATE, settings.REALTIME_PUBLISHER_BURST = 1, 3
    monkeypatch.setattr(client_publish, "async_client", lambda: None)
    rate = PublishRate()

    async def spread() -> list[bool]:
        return [await rate.allows("address:1.2.3.4", f"wall.n{index}") for index in range(5)]

    assert asyncio.run(spread()) == [True] * 3 + [False] * 2


@pytest.mark.django_db(transaction=True)
def test_data_the_publish_function_cannot_send_is_the_apps_fault_not_the_clients(
    caplog, saved_registry
):
    topics.register("chat.<slug:room>", authorize=may_chat, publish=lambda u, d, room: {1.5j})
    alice = signed_in("alice")

    async def scenario():
        socket_ = await opened(alice)
        answer = await ask(
            socket_, {"type": "publish", "topic": "chat.a", "id": "i", "data": {"text": "x"}}
        )
        nul = await ask(
            socket_, {"type": "publish", "topic": "chat.a", "id": "j", "data": {"text": "\x00"}}
        )
        await socket_.disconnect()
        return answer, nul

    answer, nul = asyncio.run(scenario())
    assert answer["code"] == "internal" and "complex" not in answer["detail"]
    assert "cannot send" in caplog.text
    assert nul["code"] == "invalid_publish"  # the client's own data: told why


def test_with_redis_the_window_is_shared_and_a_publisher_gets_its_burst_again_after_it(
    settings, monkeypatch, redis_server
):
    """Two workers' PublishRate over one Redis count together; past the window (burst / rate
    seconds: 0.4 s here) the publisher gets its burst again."""
    import redis.asyncio

    settings.REALTIME_TOPIC_PUBLISH_RATE, settings.REALTIME_TOPIC_PUBLISH_BURST = 10, 4
    settings.REALTIME_PUBLISHER_RATE = 0

    async def scenario() -> tuple[list[bool], list[bool]]:
        monkeypatch.setattr(
            client_publish, "async_client", lambda: redis.asyncio.from_url(redis_server.url)
        )
        worker_1, worker_2 = PublishRate(), PublishRate()
        window = 4 / 10
        await asyncio.sleep(window - time.time() % window + 0.01)  # a window's start
        first = [await rate.allows("user:1", "chat.a") for rate in (worker_1, worker_2) * 3]
        await asyncio.sleep(window)  # past it
        again = [await rate.allows("user:1", "chat.a") for rate in (worker_1, worker_2) * 3]
        return first, again

    first, again = asyncio.run(scenario())
    assert first == [True] * 4 + [False] * 2  # one burst over both workers
    assert again == [True] * 4 + [False] * 2
