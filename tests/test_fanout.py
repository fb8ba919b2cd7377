"""Unit tests of a worker's fan-out (realtime.messaging.fanout) and of presence, in process:
sign-outs, losing and regaining the layer, a bad event. (Delivery by offset, gaps and the
catch-up: tests/test_streams.py.)"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
import redis
from channels.layers import get_channel_layer
from django.utils import timezone

from realtime.messaging import audience_counts
from realtime.messaging.fanout import Fanout
from realtime.messaging.layer_link import LayerLost
from realtime.messaging.redis_client import sync_client
from realtime.messaging.sign_outs import SIGN_OUT_MEMORY, SIGN_OUTS_REMEMBERED
from realtime.messaging.streams import BROADCASTS, TOPIC_EVENT, TOPICS_GROUP
from realtime.websocket.sessions import SignedIn
from tests.helpers import wait_until

# Registering a socket reads its streams' positions from the database.
pytestmark = pytest.mark.django_db(transaction=True)


class FakeConsumer:
    """What the fan-out needs of a consumer: a scope, send() and close()."""

    def __init__(self) -> None:
        self.scope: dict = {}
        self.sent: list[str] = []  # broadcasts' texts
        self.told: list[dict] = []  # every other message
        self.closed: list[int] = []

    async def send(self, text_data: str) -> None:
        message = json.loads(text_data)
        if message["type"] == "broadcast":
            self.sent.append(message["message"])
        else:
            self.told.append(message)

    async def close(self, code: int, reason: str = "") -> None:
        self.closed.append(code)


async def settle() -> None:
    """Let the sends and closes the fan-out spawned run."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_sign_out_closes_the_sockets_of_that_session_or_user_only():
    async def scenario():
        fan = Fanout()
        now = timezone.now()
        a1, a2, b, anonymous = FakeConsumer(), FakeConsumer(), FakeConsumer(), FakeConsumer()
        await fan.register(a1, ["everyone"], now, SignedIn("s1", "7"))
        await fan.register(a2, ["everyone"], now, SignedIn("s2", "7"))
        await fan.register(b, ["everyone"], now, SignedIn("s3", "8"))
        await fan.register(anonymous, ["everyone"], now)
        by_session = fan.sign_outs.sign_out("session:s1")
        by_user = fan.sign_outs.sign_out("user:7")
        await settle()
        fan.link.task.cancel()
        return by_session, by_user, [c.closed for c in (a1, a2, b, anonymous)]

    by_session, by_user, closed = asyncio.run(scenario())
    assert (by_session, by_user) == (1, 1)  # a1 was no longer registered for user:7
    assert closed == [[4001], [4001], [], []]


def test_a_sign_out_between_a_sockets_welcome_and_its_registration_still_closes_it():
    """The consumer registers just after its welcome: a sign-out handled in between found no
    socket to close (seen in the full suite: a test signed out right after the welcome). A
    socket that connected after an access change keeps its place (the demoted user's
    reconnect in test_fanout_life)."""

    async def scenario():
        fan = Fanout()
        before = timezone.now() - timedelta(seconds=0.5)
        session_raced, user_raced = FakeConsumer(), FakeConsumer()
        fresh, other = FakeConsumer(), FakeConsumer()
        # Handled while these sockets, connected just before, were still registering:
        fan.sign_outs.sign_out("session:s1")  # a sign-out
        fan.sign_outs.sign_out("user:9")  # an access change (demotion, new password, ...)
        await fan.register(session_raced, ["everyone"], before, SignedIn("s1", "7"))
        await fan.register(user_raced, ["everyone"], before, SignedIn("s3", "9"))
        # Connected after the access change: it read the new access, and stays.
        later = timezone.now() + timedelta(seconds=0.5)
        await fan.register(fresh, ["everyone"], later, SignedIn("s4", "9"))
        await fan.register(other, ["everyone"], before, SignedIn("s2", "8"))
        await settle()
        fan.link.task.cancel()
        return [c.closed for c in (session_raced, user_raced, fresh, other)]

    assert asyncio.run(scenario()) == [[4001], [4001], [], []]


def test_sign_outs_are_forgotten_after_their_memory_and_kept_bounded():
    fan = Fanout()
    now = [1000.0]
    fan.sign_outs.wall_clock = lambda: now[0]
    fan.sign_outs.sign_out("session:old")
    now[0] += SIGN_OUT_MEMORY + 1
    fan.sign_outs.sign_out("session:new")
    assert list(fan.sign_outs.recent_sign_outs) == ["session:new"]
    for n in range(SIGN_OUTS_REMEMBERED + 10):
        fan.sign_outs.sign_out(f"user:{n}")
    assert len(fan.sign_outs.recent_sign_outs) == SIGN_OUTS_REMEMBERED


def test_losing_the_layer_closes_signed_in_sockets_refuses_new_ones_and_recovers(settings):
    settings.REALTIME_FANOUT_CHECK = 1
    settings.REALTIME_FANOUT_CHECK_TIMEOUT = 1
    layer = get_channel_layer()

    async def scenario():
        fan = Fanout()
        signed_in, anonymous = FakeConsumer(), FakeConsumer()
        now = timezone.now()
        await fan.register(signed_in, ["everyone"], now, SignedIn("s1", "7"))
        await fan.register(anonymous, ["everyone"], now)
        real_group_send = layer.group_send

        async def failing(group, message):
            raise redis.ConnectionError("Connection refused")

        layer.group_send = failing
        try:
            while fan.problem() is None:  # the next check, at most a second away
                await asyncio.sleep(0.1)
            problem = fan.problem()
            with pytest.raises(LayerLost):
                await fan.register(FakeConsumer(), ["everyone"], now)
        finally:
            layer.group_send = real_group_send
        while fan.problem() is not None:
            await asyncio.sleep(0.1)
        await fan.register(FakeConsumer(), ["everyone"], now)  # accepted again
        await settle()
        fan.link.task.cancel()
        return problem, signed_in.closed, anonymous.closed, anonymous.told

    problem, signed_in_closed, anonymous_closed, told = asyncio.run(scenario())
    assert problem.startswith("lost the channel layer") and "Connection refused" in problem
    assert signed_in_closed == [1013]
    assert anonymous_closed == []
    # The open socket hears that live updates paused, and that they are back.
    assert told == [
        {"type": "status", "live": False, "reason": "The server lost its channel layer"},
        {"type": "status", "live": True},
    ]


def test_presence_sums_every_workers_counts_and_forgets_an_expired_one(settings, redis_server):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_server.url, "socket_timeout": None}]},
        }
    }
    sync_client.cache_clear()
    try:
        client = sync_client()
        client.flushdb()
        key = audience_counts.COUNTS_KEY
        client.hset(key, "a:1", audience_counts.entry({"everyone": 3, "staff": 1}, 60))
        client.hset(key, "b:2", audience_counts.entry({"everyone": 2, "authenticated": 2}, 0.3))
        both = audience_counts.counts()
        wait_until(lambda: audience_counts.counts()["everyone"] == 3, "b:2's expiry", 0.3 + 1, 0.05)
        one = audience_counts.counts()
        fields = client.hkeys(key)
    finally:
        sync_client.cache_clear()
    assert both == {"everyone": 5, "authenticated": 2, "staff": 1}
    assert one == {"everyone": 3, "authenticated": 0, "staff": 1}
    assert fields == [b"a:1"]  # the expired worker's field was removed


def test_an_event_it_cannot_handle_is_dropped_and_the_fanout_keeps_working(caplog):
    async def scenario():
        fan = Fanout()
        consumer = FakeConsumer()
        await fan.register(consumer, ["everyone"], timezone.now())
        layer = get_channel_layer()
        await layer.group_send(TOPICS_GROUP, {"type": TOPIC_EVENT})  # no topic
        text = json.dumps({"type": "broadcast", "message": "after"})
        offset = fan.streams.streams[BROADCASTS].delivered + 1
        good = {"type": TOPIC_EVENT, "topic": BROADCASTS, "offset": offset, "text": text}
        good["audience"] = "everyone"
        await layer.group_send(TOPICS_GROUP, good)
        for _ in range(50):
            if consumer.sent:
                break
            await asyncio.sleep(0.02)
        problem = fan.problem()
        fan.link.task.cancel()
        return consumer.sent, problem

    sent, problem = asyncio.run(scenario())
    assert sent == ["after"]
    assert problem is None
    assert "could not handle an event" in caplog.text


def test_a_socket_that_registers_while_the_layer_is_being_lost_is_refused():
    async def scenario():
        fan = Fanout()
        await fan.register(FakeConsumer(), ["everyone"], timezone.now())
        while fan.link.probe_waiter is None or not fan.link.probe_waiter.done():
            await asyncio.sleep(0.01)  # the first check is over; the next is 5 s away
        await asyncio.sleep(0)
        fan.link.joined.clear()  # as before the groups are joined
        late = FakeConsumer()
        registering = asyncio.ensure_future(
            fan.register(late, ["everyone"], timezone.now(), SignedIn("s1", "7"))
        )
        await settle()  # it waits for the groups...
        fan.link.joined.set()  # ...which are joined...
        fan.link.lose("gone")  # ...and the layer is lost before it runs again
        with pytest.raises(LayerLost):
            await registering
        fan.link.task.cancel()
        return fan.sign_outs.keys_of

    assert asyncio.run(scenario()) == {}


def test_healthz_checks_reuse_one_subscription_on_the_pubsub_layer(settings, redis_server):
    """A new channel per check would stay subscribed for the life of the process."""
    from realtime.ops.health import check_channel_layer

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_server.url, "socket_timeout": None}]},
        }
    }

    async def scenario():
        for _ in range(5):
            await check_channel_layer()
        return redis.Redis.from_url(redis_server.url).pubsub_channels("*healthz*")

    assert len(asyncio.run(scenario())) == 1
