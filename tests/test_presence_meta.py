"""Presence metadata (`presence_update`): in process through the consumer (the in-memory
layer), and a worker's Presence against a real Redis (two instances standing for two workers):
who may set a meta, what is refused, the interval that coalesces updates, which meta wins when
a user has several sockets or workers, the refresh, and entries of the previous version."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model

from realtime import topics
from realtime.messaging import topic_presence
from realtime.messaging import topic_rules as registry
from realtime.messaging.delivery import Subscription
from realtime.messaging.redis_client import sync_client
from realtime.messaging.topic_presence import KEY_PREFIX, META_PREFIX, Presence, users_of
from realtime.websocket.presence_updates import Refused, check_meta
from tests.test_authorization import opened, signed_in

TOPIC = "documents.intro"
ALLOWED: set[str] = set()  # who may follow "rooms.<slug>" (the app's own rule)


@pytest.fixture(autouse=True)
def _topics():
    saved = dict(registry.registrations)
    ALLOWED.clear()
    topics.register("documents.<slug:slug>", authorize=lambda user, slug: True, presence=True)
    topics.register("orders.<int:order_id>", authorize=lambda user, order_id: True)
    topics.register(
        "rooms.<slug:slug>",
        authorize=lambda user, slug: user.get_username() in ALLOWED,
        presence=True,
    )
    yield
    registry.registrations.clear()
    registry.registrations.update(saved)
    async_to_sync(get_channel_layer().flush)()


async def ask(socket_, message: dict) -> dict:
    await socket_.send_json_to(message)
    return await socket_.receive_json_from()


async def joined(socket_, topic: str = TOPIC) -> dict:
    """Subscribe to a presence topic; returns its `presence` list."""
    assert (await ask(socket_, {"type": "subscribe", "topic": topic}))["type"] == "subscribed"
    return await socket_.receive_json_from()


def update(meta, topic: str = TOPIC) -> dict:
    return {"type": "presence_update", "topic": topic, "meta": meta}


def ids() -> dict[str, int]:
    return {u.username: u.pk for u in get_user_model().objects.all()}


# --- Through the consumer ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_update_reaches_every_watcher_and_a_later_subscriber_lists_it():
    alice, bob, carol = signed_in("alice"), signed_in("bob"), signed_in("carol")

    async def scenario():
        watcher, tab = await opened(bob), await opened(alice)
        await joined(watcher)
        await joined(tab)
        joined_alice = await watcher.receive_json_from()
        await tab.send_json_to(update({"status": "away", "cursor": [3, 14]}))
        seen = await watcher.receive_json_from()
        own = await tab.receive_json_from()  # the updating socket hears it too: applied
        late = await opened(carol)
        listed = await joined(late)
        now = await sync_to_async(topics.presence)(TOPIC)
        for socket_ in (watcher, tab, late):
            await socket_.disconnect()
        return joined_alice, seen, own, listed, now

    joined_alice, seen, own, listed, now = asyncio.run(scenario())
    pk = ids()
    assert joined_alice["user"] == {"id": pk["alice"], "username": "alice", "meta": {}}
    alice = {"id": pk["alice"], "username": "alice", "meta": {"status": "away", "cursor": [3, 14]}}
    assert seen == {"type": "update", "topic": TOPIC, "user": alice}
    assert own == seen
    users = {u["username"]: u for u in listed["users"]}
    assert users["alice"] == alice and users["bob"]["meta"] == {}
    assert {u["username"]: u["meta"] for u in now} == {
        "alice": alice["meta"],
        "bob": {},
        "carol": {},
    }


@pytest.mark.django_db(transaction=True)
def test_updates_within_the_interval_are_written_once_after_it_the_latest_winning(settings):
    settings.REALTIME_PRESENCE_UPDATE_INTERVAL = 1
    alice, bob = signed_in("alice"), signed_in("bob")

    async def scenario():
        watcher, tab = await opened(bob), await opened(alice)
        await joined(watcher)
        await joined(tab)
        await watcher.receive_json_from()  # join
        await tab.send_json_to(update({"n": 1}))
        first = await watcher.receive_json_from()
        started = time.monotonic()
        for n in range(2, 6):
            await tab.send_json_to(update({"n": n}))
        held = await watcher.receive_nothing(0.5)
        latest = await watcher.receive_json_from()
        waited = time.monotonic() - started
        after = await watcher.receive_nothing(1.3)  # past another interval: nothing more
        await tab.send_json_to(update({"n": 6}))  # an interval after the last write: at once
        again_started = time.monotonic()
        again = await watcher.receive_json_from()
        again_waited = time.monotonic() - again_started
        for socket_ in (watcher, tab):
            await socket_.disconnect()
        return first, held, latest, waited, after, again, again_waited

    first, held, latest, waited, after, again, again_waited = asyncio.run(scenario())
    assert first["user"]["meta"] == {"n": 1}
    assert held  # n=2..4 never told; n=5 waits for the interval
    assert latest["user"]["meta"] == {"n": 5}
    assert 0.5 <= waited < 2.0
    assert after
    assert again["user"]["meta"] == {"n": 6}
    assert again_waited < 0.5


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (update("away"), "invalid_presence_update"),
        (update([1, 2]), "invalid_presence_update"),
        ({"type": "presence_update", "topic": TOPIC}, "invalid_presence_update"),
        (update({"s": "x" * 1100}), "too_large"),
        (update({"s": "a\x00b"}), "invalid_presence_update"),
        (update({"s": "\ud800"}), "invalid_presence_update"),
        (update({"x": float("nan")}), "invalid_presence_update"),
        (update({"deep": json.loads("[" * 70 + "]" * 70)}), "invalid_presence_update"),
        (update({}, "documents.other"), "not_subscribed"),
        (update({}, "user"), "not_subscribed"),
        (update({}, "$broadcasts"), "not_subscribed"),
        (update({}, "orders.7"), "forbidden"),  # subscribed, not a presence topic
    ],
)
@pytest.mark.django_db(transaction=True)
def test_a_refused_update_says_why_and_tells_nobody(message, code):
    alice, bob = signed_in("alice"), signed_in("bob")

    async def scenario():
        watcher, tab = await opened(bob), await opened(alice)
        await joined(watcher)
        await joined(tab)
        await watcher.receive_json_from()  # join
        await ask(tab, {"type": "subscribe", "topic": "orders.7"})
        await tab.send_to(json.dumps(message))  # NaN and a lone surrogate as JSON allows
        answer = await tab.receive_json_from()
        quiet = await watcher.receive_nothing(0.3)
        listed = await sync_to_async(topics.presence)(TOPIC)
        for socket_ in (watcher, tab):
            await socket_.disconnect()
        return answer, quiet, listed

    answer, quiet, listed = asyncio.run(scenario())
    assert answer["type"] == "error" and answer["code"] == code
    assert answer["topic"] == message["topic"] and answer["request"] == "presence_update"
    assert quiet
    assert [u["meta"] for u in listed] == [{}, {}]


def test_a_meta_of_exactly_the_limit_is_taken(settings):
    settings.REALTIME_PRESENCE_META_MAX = 64
    check_meta({"s": "é" * 28})  # 8 bytes of JSON around 28 two-byte characters: 64
    with pytest.raises(Refused, match="65 bytes"):
        check_meta({"s": "é" * 28 + "x"})


@pytest.mark.django_db(transaction=True)
def test_an_anonymous_subscriber_may_not_set_a_meta():
    async def scenario():
        anonymous = await opened()
        listed = await joined(anonymous)
        answer = await ask(anonymous, update({"status": "here"}))
        await anonymous.disconnect()
        return listed, answer

    listed, answer = asyncio.run(scenario())
    assert listed["users"] == []  # not counted
    assert (answer["code"], answer["topic"]) == ("forbidden", TOPIC)


@pytest.mark.django_db(transaction=True)
def test_a_topic_the_user_lost_or_left_takes_no_update():
    ALLOWED.add("alice")
    alice = signed_in("alice")
    user = get_user_model().objects.get(username="alice")

    async def scenario():
        tab = await opened(alice)
        await joined(tab, "rooms.r")
        await joined(tab)
        ALLOWED.discard("alice")
        await sync_to_async(topics.recheck)(user)
        ended = await tab.receive_json_from()
        after_recheck = await ask(tab, update({"x": 1}, "rooms.r"))
        await ask(tab, {"type": "unsubscribe", "topic": TOPIC})
        after_unsubscribe = await ask(tab, update({"x": 1}))
        await tab.disconnect()
        return ended, after_recheck, after_unsubscribe

    ended, after_recheck, after_unsubscribe = asyncio.run(scenario())
    assert ended == {"type": "unsubscribed", "topic": "rooms.r", "reason": "forbidden"}
    assert after_recheck["code"] == after_unsubscribe["code"] == "not_subscribed"


@pytest.mark.django_db(transaction=True)
def test_several_sockets_of_a_user_the_latest_update_wins_and_leaving_forgets_it(settings):
    settings.REALTIME_PRESENCE_UPDATE_INTERVAL = 1
    alice, bob = signed_in("alice"), signed_in("bob")
    second = type(alice)()
    assert second.login(username="alice", password="pw-alice")

    async def scenario():
        watcher, tab1, tab2 = await opened(bob), await opened(alice), await opened(second)
        await joined(watcher)
        for tab in (tab1, tab2):
            await joined(tab)
        await watcher.receive_json_from()  # one join for both tabs
        await tab1.send_json_to(update({"tab": 1}))
        one = await watcher.receive_json_from()
        await tab2.send_json_to(update({"tab": 2}))
        two = await watcher.receive_json_from()  # the interval is the user's, not the tab's
        await tab2.disconnect()
        stays = await watcher.receive_nothing(0.3)  # tab1 is still there: the meta stays
        await tab1.disconnect()
        left = await watcher.receive_json_from()
        back = await opened(alice)
        await joined(back)
        rejoined = await watcher.receive_json_from()
        for socket_ in (watcher, back):
            await socket_.disconnect()
        return one, two, stays, left, rejoined

    one, two, stays, left, rejoined = asyncio.run(scenario())
    assert one["user"]["meta"] == {"tab": 1}
    assert two["user"]["meta"] == {"tab": 2}
    assert stays
    assert left["type"] == "leave" and "meta" not in left["user"]
    assert rejoined["type"] == "join" and rejoined["user"]["meta"] == {}


# --- Two workers' Presence on one Redis ---------------------------------------------------


class User:
    is_authenticated = True

    def __init__(self, pk: int, username: str) -> None:
        self.pk, self.username = pk, username

    def get_username(self) -> str:
        return self.username


class Heard:
    """A socket's recipient: what it was told."""

    def __init__(self) -> None:
        self.told: list[dict] = []

    def push(self, frame) -> None:
        self.told.append(json.loads(frame.text))


class Worker:
    """A Presence with its sockets' subscriptions, as a worker's fan-out holds them."""

    def __init__(self) -> None:
        self.presence = Presence()
        self.subs: dict[str, list[Subscription]] = {}
        self.presence.subscriptions = lambda topic: self.subs.get(topic, [])

    async def enter(self, user: User | None, topic: str = TOPIC) -> tuple[Subscription, Heard]:
        heard = Heard()
        subscription = Subscription(heard, topic, topic, None, 0)
        self.subs.setdefault(topic, []).append(subscription)
        await self.presence.enter(subscription, user)
        return subscription, heard

    def leave(self, subscription: Subscription) -> None:
        self.subs[subscription.name].remove(subscription)
        self.presence.leave(subscription)

    async def close(self) -> None:
        if self.presence.refresher is not None:
            self.presence.refresher.cancel()
        if self.presence.client is not None:
            await self.presence.client.aclose()


@pytest.fixture
def redis_presence(settings, redis_server, monkeypatch):
    """Presence on a real Redis; the change events are left out (the tests read)."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_server.url, "socket_timeout": None}]},
        }
    }
    settings.REALTIME_PRESENCE_UPDATE_INTERVAL = 1

    async def no_event(group, message):
        pass

    monkeypatch.setattr(topic_presence, "group_send", no_event)
    sync_client.cache_clear()
    sync_client().flushdb()
    yield sync_client()
    sync_client().close()
    sync_client.cache_clear()


def calls(client, command: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


async def written(worker: Worker) -> None:
    """Let the worker's spawned meta writes run."""
    while worker.presence.due:
        await asyncio.sleep(0.02)
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_the_latest_meta_over_every_worker_wins_and_leaving_falls_back(redis_presence):
    alice, bob = User(1, "alice"), User(2, "bob")

    async def scenario():
        w1, w2 = Worker(), Worker()
        a1, _ = await w1.enter(alice)
        a2, _ = await w2.enter(alice)
        _, heard = await w1.enter(bob)
        w1.presence.update(a1, {"on": "w1"})
        await written(w1)
        await w1.presence.read(TOPIC)
        # Received before w1's (by the clocks), written after it: w1's stays the latest.
        w2.presence.update(a2, {"on": "w2"})
        stamp_w2 = w1.presence.meta[TOPIC]["1"][0] - 1
        w2.presence.meta[TOPIC]["1"] = (stamp_w2, {"on": "w2"})
        await written(w2)
        first = await w1.presence.read(TOPIC)
        w1.leave(a1)  # the worker holding the latest: alice falls back to w2's
        await asyncio.sleep(0.1)
        fallback = await w1.presence.read(TOPIC)
        listed = await sync_to_async(topics.presence)(TOPIC)
        for worker in (w1, w2):
            await worker.close()
        return stamp_w2, first, fallback, heard.told, listed

    stamp_w2, first, fallback, told, listed = asyncio.run(scenario())
    assert first["1"]["meta"] == {"on": "w1"}  # stamped later, though written earlier
    assert fallback["1"]["meta"] == {"on": "w2"}
    assert [(m["type"], m["user"]["meta"]) for m in told] == [
        ("update", {"on": "w1"}),
        ("update", {"on": "w2"}),
    ]
    assert {u["username"]: u["meta"] for u in listed} == {"alice": {"on": "w2"}, "bob": {}}
    stored = redis_presence.hgetall(META_PREFIX + TOPIC)
    assert len(stored) == 1  # w1's field went with its member
    assert json.loads(next(iter(stored.values())))[0] == stamp_w2


def test_the_refresh_renews_without_writing_the_meta_and_drops_an_expired_members(
    redis_presence, settings
):
    settings.REALTIME_PRESENCE_TTL = 3
    alice, bob = User(1, "alice"), User(2, "bob")

    async def scenario():
        w1, dead = Worker(), Worker()
        a1, _ = await w1.enter(alice)
        b, _ = await dead.enter(bob)
        w1.presence.update(a1, {"status": "away"})
        dead.presence.update(b, {"status": "gone soon"})
        await written(w1), await written(dead)
        dead.presence.refresher.cancel()  # killed: no refresh any more
        hsets = calls(redis_presence, "hset")
        await asyncio.sleep(3.2)  # past the TTL: the dead worker's entry expired
        await w1.presence.refresh()
        after = await w1.presence.read(TOPIC)
        rewritten = calls(redis_presence, "hset") - hsets
        fields = redis_presence.hgetall(META_PREFIX + TOPIC)
        ttl = redis_presence.ttl(META_PREFIX + TOPIC)
        # w1 stalled past the TTL: its member expired with its meta; its refresh writes both.
        redis_presence.eval(topic_presence.FORGET_EXPIRED, 2, KEY_PREFIX + TOPIC,
                            META_PREFIX + TOPIC, time.time() + 10)  # fmt: skip
        gone = redis_presence.hlen(META_PREFIX + TOPIC)
        await w1.presence.refresh()
        healed = await w1.presence.read(TOPIC)
        for worker in (w1, dead):
            await worker.close()
        return after, rewritten, fields, ttl, gone, healed

    after, rewritten, fields, ttl, gone, healed = asyncio.run(scenario())
    assert list(after) == ["1"] and after["1"]["meta"] == {"status": "away"}
    assert rewritten == 0  # the refresh sent no meta
    assert len(fields) == 1  # bob's went with his expired member
    assert 0 < ttl <= 7
    assert gone == 0
    assert healed["1"]["meta"] == {"status": "away"}


def test_an_entry_of_the_previous_version_is_read_with_an_empty_meta(redis_presence):
    # The previous version wrote the same members, [worker, pk, username], and no hash.
    expires = time.time() + 60
    old = json.dumps(["old-worker", 5, "erin"])
    redis_presence.zadd(KEY_PREFIX + TOPIC, {old: expires})
    listed = topics.presence(TOPIC)
    # ... and what this version writes, the previous one still reads: three fields.
    w1 = Worker()

    async def scenario():
        a1, _ = await w1.enter(User(1, "alice"))
        w1.presence.update(a1, {"x": 1})
        await written(w1)
        await w1.close()

    asyncio.run(scenario())
    members = redis_presence.zrange(KEY_PREFIX + TOPIC, 0, -1)
    assert listed == [{"id": 5, "username": "erin", "meta": {}}]
    assert all(len(json.loads(m)) == 3 for m in members)
    # A later version may append to a member: read by its first three fields.
    later = json.dumps(["w9", 6, "finn", "more"]).encode()
    assert users_of([later], {later: b'[1.5,{"k":"v"}]', b"junk": b"["}) == {
        "6": {"id": 6, "username": "finn", "meta": {"k": "v"}}
    }
