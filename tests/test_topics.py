"""Topics in process (realtime.topics, the in-memory layer): patterns and authorization,
subscribe, offsets and resume, messages to one user, presence, and subscriptions checked
again when access changes."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client

from realtime import broadcast, topics
from realtime.messaging import fanout, streams
from realtime.messaging import topic_rules as registry
from tests.helpers import wait_until
from tests.test_authorization import opened, signed_in, socket_for

pytestmark = pytest.mark.django_db(transaction=True)

FOLLOWERS: dict[int, set[str]] = {}  # order id -> usernames allowed (the app's own rule)


@pytest.fixture(autouse=True)
def _topics():
    saved = dict(registry.registrations)
    FOLLOWERS.clear()
    FOLLOWERS[42] = {"alice", "carol"}

    @topics.register("orders.<int:order_id>")
    def can_follow(user, order_id):
        return user.is_authenticated and user.get_username() in FOLLOWERS.get(order_id, ())

    topics.register("documents.<slug:slug>", authorize=lambda user, slug: True, presence=True)
    yield
    registry.registrations.clear()
    registry.registrations.update(saved)
    async_to_sync(get_channel_layer().flush)()


async def ask(communicator, message: dict) -> dict:
    await communicator.send_json_to(message)
    return await communicator.receive_json_from()


async def subscribe(communicator, topic: str, since=None) -> dict:
    message = {"type": "subscribe", "topic": topic}
    if since is not None:
        message["since"] = since
    return await ask(communicator, message)


async def received(communicator, count: int) -> list[dict]:
    return [await communicator.receive_json_from() for _ in range(count)]


def test_patterns_use_djangos_converters_and_match_whole_names():
    assert registry.match("orders.42")[1] == {"order_id": 42}
    assert registry.match("documents.intro-2")[1] == {"slug": "intro-2"}
    for name in ["orders.x", "orders.42.items", "xorders.42", "orders/42", "", "a" * 201, 42]:
        assert registry.match(name) is None, name


@pytest.mark.parametrize("pattern", ["$mine", "user", "a/<int:n>"])
def test_reserved_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        topics.register(pattern, authorize=lambda user: True)


@pytest.mark.parametrize(
    ("topic", "data", "event", "says"),
    [
        ("nothing.registered", {}, "message", "No registered topic pattern matches"),
        ("orders.42", {"blob": "x" * 70_000}, "message", "REALTIME_TOPIC_MAX_DATA"),
        ("orders.42", {"when": time}, "message", "JSON-serialisable"),
        ("orders.42", float("nan"), "message", "JSON-serialisable"),
        ("orders.42", {}, "", "event must be"),
    ],
)
def test_send_refuses_with_a_clear_message(topic, data, event, says):
    with pytest.raises(ValueError, match=says):
        topics.send(topic, data, event=event)


def test_a_subscriber_gets_each_message_with_the_next_offset():
    alice = signed_in("alice")

    async def scenario():
        socket_ = await opened(alice)
        subscribed = await subscribe(socket_, "orders.42")
        await sync_to_async(topics.send)("orders.42", {"status": "paid"}, event="status")
        await sync_to_async(topics.send)("orders.42", {"status": "shipped"}, event="status")
        messages = await received(socket_, 2)
        nothing_more = await socket_.receive_nothing()
        await socket_.disconnect()
        return subscribed, messages, nothing_more

    subscribed, messages, nothing_more = asyncio.run(scenario())
    assert subscribed["type"] == "subscribed" and subscribed["topic"] == "orders.42"
    assert subscribed["epoch"] and subscribed["offset"] == 0
    assert messages == [
        {"type": "message", "topic": "orders.42", "event": "status", "data": d, "offset": n}
        for n, d in [(1, {"status": "paid"}), (2, {"status": "shipped"})]
    ]
    assert nothing_more


@pytest.mark.parametrize("topic", ["orders.42", "orders.7", "nothing.registered", "user"])
def test_a_forbidden_or_unknown_topic_is_refused_alike_and_sends_nothing(topic):
    bob = signed_in("bob")

    async def scenario():
        anonymous, socket_ = await opened(), await opened(bob)
        answers = [await subscribe(s, topic) for s in (socket_, anonymous)]
        if registry.match(topic):
            await sync_to_async(topics.send)(topic, {"secret": 1})
        quiet = [await s.receive_nothing() for s in (socket_, anonymous)]
        for s in (socket_, anonymous):
            await s.disconnect()
        return answers, quiet

    answers, quiet = asyncio.run(scenario())
    if topic == "user":
        answers = answers[1:]  # bob's own topic is his: only the anonymous one is refused
    for answer in answers:
        assert answer == {
            "type": "error",
            "code": "forbidden",
            "topic": topic,
            "detail": "This socket may not subscribe to that topic.",
        }
    assert all(quiet)


def test_a_message_sent_in_a_transaction_goes_out_on_commit_and_never_on_rollback():
    alice = signed_in("alice")

    def send_in_transactions():
        with transaction.atomic():
            topics.send("orders.42", "rolled back")
            transaction.set_rollback(True)
        with transaction.atomic():
            topics.send("orders.42", "committed")

    async def scenario():
        socket_ = await opened(alice)
        await subscribe(socket_, "orders.42")
        await sync_to_async(send_in_transactions)()
        [message] = await received(socket_, 1)
        nothing_more = await socket_.receive_nothing()
        await socket_.disconnect()
        return message, nothing_more

    message, nothing_more = asyncio.run(scenario())
    assert (message["data"], message["offset"]) == ("committed", 1)
    assert nothing_more


def test_resume_from_an_offset_replays_each_missed_message_once_then_live_ones():
    alice = signed_in("alice")

    async def scenario():
        first = await opened(alice)
        subscribed = await subscribe(first, "orders.42")
        await sync_to_async(topics.send)("orders.42", "seen")
        [seen] = await received(first, 1)
        await first.disconnect()
        for text in ("missed 1", "missed 2"):
            await sync_to_async(topics.send)("orders.42", text)
        again = await opened(alice)
        since = {"epoch": subscribed["epoch"], "offset": seen["offset"]}
        answer = await subscribe(again, "orders.42", since)
        replayed = await received(again, 2)
        await sync_to_async(topics.send)("orders.42", "live")
        [live] = await received(again, 1)
        nothing_more = await again.receive_nothing()
        await again.disconnect()
        return answer, replayed, live, nothing_more

    answer, replayed, live, nothing_more = asyncio.run(scenario())
    assert (answer["type"], answer["offset"]) == ("subscribed", 1)
    assert [(m["data"], m["offset"]) for m in replayed] == [("missed 1", 2), ("missed 2", 3)]
    assert (live["data"], live["offset"]) == ("live", 4)
    assert nothing_more


class LateHearing:
    """This worker hears one stream's messages only when told to: as if another worker heard
    them first (the channel layer reached it sooner, or it filled a gap sooner) and the
    client, which had them there, then resumed here. In process, the held-back layer event
    stands for that second worker."""

    def __init__(self, monkeypatch, stream: str) -> None:
        self.stream, self.held, self.real = stream, [], fanout.fanout.handle
        monkeypatch.setattr(fanout.fanout, "handle", self.handle)

    def handle(self, event: dict) -> None:
        if event.get("topic") == self.stream and self.held is not None:
            self.held.append(event)
        else:
            self.real(event)

    def hear(self) -> None:
        held, self.held = self.held, None
        for event in held:
            self.real(event)


def test_a_topic_resume_past_what_this_worker_delivered_gets_nothing_twice(monkeypatch):
    alice = signed_in("alice")
    late = LateHearing(monkeypatch, "orders.42")

    async def scenario():
        watcher = await opened(alice)  # keeps the stream open here, at offset 0
        epoch = (await subscribe(watcher, "orders.42"))["epoch"]
        for text in ("had 1", "had 2"):
            await sync_to_async(topics.send)("orders.42", text)
        resumed = await opened(alice)
        answer = await subscribe(resumed, "orders.42", {"epoch": epoch, "offset": 2})
        late.hear()
        await sync_to_async(topics.send)("orders.42", "new")
        watched = await received(watcher, 3)
        [new] = await received(resumed, 1)
        nothing_more = await resumed.receive_nothing()
        for socket_ in (watcher, resumed):
            await socket_.disconnect()
        return answer, [m["offset"] for m in watched], new, nothing_more

    answer, watched, new, nothing_more = asyncio.run(scenario())
    assert (answer["type"], answer["offset"]) == ("subscribed", 2)
    assert watched == [1, 2, 3]
    assert (new["data"], new["offset"]) == ("new", 3)
    assert nothing_more


def test_a_broadcast_resume_past_what_this_worker_delivered_gets_nothing_twice(monkeypatch):
    late = LateHearing(monkeypatch, streams.BROADCASTS)

    async def scenario():
        watcher = await opened()  # keeps the broadcasts open here
        epoch, start = await sync_to_async(streams.position)(streams.BROADCASTS)
        for text in ("had 1", "had 2"):
            await sync_to_async(broadcast.send)(text)
        path = f"/ws/?broadcasts={epoch}:{start + 2}"
        resumed = socket_for(path=path)
        assert (await resumed.connect())[0]
        welcome, answer = await received(resumed, 2)
        late.hear()
        await sync_to_async(broadcast.send)("new")
        watched = await received(watcher, 3)
        [new] = await received(resumed, 1)
        nothing_more = await resumed.receive_nothing()
        for socket_ in (watcher, resumed):
            await socket_.disconnect()
        return start, welcome, answer, [m["offset"] for m in watched], new, nothing_more

    start, welcome, answer, watched, new, nothing_more = asyncio.run(scenario())
    assert welcome["broadcasts"]["offset"] == start  # where this worker stood
    assert (answer["type"], answer["offset"], answer["replayed"]) == ("resumed", start + 2, 0)
    assert watched == [start + 1, start + 2, start + 3]
    assert (new["message"], new["offset"]) == ("new", start + 3)
    assert nothing_more


@pytest.mark.parametrize("case", ["epoch", "too_many", "too_old"])
def test_a_resume_the_history_cannot_serve_fails_and_continues_live(case, settings):
    settings.REALTIME_TOPIC_HISTORY_SIZE = 3
    settings.REALTIME_TOPIC_HISTORY_TTL = 1
    alice = signed_in("alice")
    for n in range(5 if case == "too_many" else 2):
        topics.send("orders.42", n)
    epoch = registry.streams.position("orders.42")[0]
    since = {
        "epoch": "other" if case == "epoch" else epoch,
        "offset": 0 if case != "too_old" else 1,
    }
    if case == "too_old":
        wait_until(lambda: too_old("orders.42", epoch, 2), "the history past its TTL", 2, 0.05)

    async def scenario():
        socket_ = await opened(alice)
        answers = await received_after(socket_, {"type": "subscribe", "topic": "orders.42",
                                                 "since": since}, 2)  # fmt: skip
        await socket_.disconnect()
        return answers

    failed, subscribed = asyncio.run(scenario())
    reason = {"epoch": "epoch_changed", "too_many": "too_many", "too_old": "too_old"}[case]
    last = 5 if case == "too_many" else 2
    assert failed["type"] == "resume_failed" and failed["reason"] == reason
    assert (failed["topic"], failed["epoch"], failed["offset"]) == ("orders.42", epoch, last)
    assert subscribed == {"type": "subscribed", "topic": "orders.42", "epoch": epoch,
                          "offset": last}  # fmt: skip


def too_old(topic: str, epoch: str, last: int) -> bool:
    """Whether a resume of `topic` from its start is refused as older than the history keeps."""
    return streams.replay(topic, epoch, 0, last).failure == "too_old"


async def received_after(socket_, message: dict, count: int) -> list[dict]:
    await socket_.send_json_to(message)
    return await received(socket_, count)


def test_a_message_to_a_user_reaches_every_tab_of_that_user_and_nobody_else():
    alice_tabs, bob = [signed_in("alice"), Client()], signed_in("bob")
    assert alice_tabs[1].login(username="alice", password="pw-alice")
    alice = get_user_model().objects.get(username="alice")

    async def scenario():
        sockets = [await opened(tab) for tab in alice_tabs]
        others = [await opened(bob), await opened()]
        for socket_ in sockets + others:  # registered with the fan-out
            assert (await ask(socket_, {"type": "ping"}))["type"] == "pong"
        await sync_to_async(topics.send_to_user)(alice, {"text": "Your export is ready"})
        got = [await s.receive_json_from() for s in sockets]
        quiet = [await s.receive_nothing() for s in sockets + others]
        for socket_ in sockets + others:
            await socket_.disconnect()
        return got, quiet

    got, quiet = asyncio.run(scenario())
    assert got == [
        {"type": "message", "topic": "user", "event": "message",
         "data": {"text": "Your export is ready"}, "offset": 1}
    ] * 2  # fmt: skip
    assert all(quiet)


def test_a_users_topic_resumes_from_its_offset():
    alice = signed_in("alice")
    pk = get_user_model().objects.get(username="alice").pk

    async def scenario():
        first = await opened(alice)
        await first.disconnect()
        for n in range(2):
            await sync_to_async(topics.send_to_user)(pk, n)
        socket_ = socket_for(alice)
        assert (await socket_.connect())[0]
        welcome = await socket_.receive_json_from()
        since = {"epoch": welcome["user_topic"]["epoch"], "offset": 0}
        answer = await subscribe(socket_, "user", since)
        replayed = await received(socket_, 2)
        nothing_more = await socket_.receive_nothing()
        await socket_.disconnect()
        return welcome, answer, replayed, nothing_more

    welcome, answer, replayed, nothing_more = asyncio.run(scenario())
    assert welcome["user_topic"]["offset"] == 2
    assert (answer["type"], answer["topic"], answer["offset"]) == ("subscribed", "user", 0)
    assert [(m["data"], m["offset"]) for m in replayed] == [(0, 1), (1, 2)]
    assert nothing_more


def test_unsubscribe_stops_the_messages():
    alice = signed_in("alice")

    async def scenario():
        socket_ = await opened(alice)
        await subscribe(socket_, "orders.42")
        answer = await ask(socket_, {"type": "unsubscribe", "topic": "orders.42"})
        await sync_to_async(topics.send)("orders.42", "after")
        nothing = await socket_.receive_nothing()
        await socket_.disconnect()
        return answer, nothing

    answer, nothing = asyncio.run(scenario())
    assert answer == {"type": "unsubscribed", "topic": "orders.42", "reason": "requested"}
    assert nothing


def test_subscriptions_per_socket_are_limited(settings):
    settings.REALTIME_WS_MAX_SUBSCRIPTIONS = 2

    async def scenario_with_presence():
        socket_ = await opened()
        answers = []
        for n in range(3):
            answer = await subscribe(socket_, f"documents.d{n}")
            if answer["type"] == "subscribed":
                await socket_.receive_json_from()  # presence
            answers.append(answer)
        again = await subscribe(socket_, "documents.d0")  # already subscribed: still allowed
        await socket_.disconnect()
        return answers, again

    answers, again = asyncio.run(scenario_with_presence())
    assert [a["type"] for a in answers] == ["subscribed", "subscribed", "error"]
    assert answers[2]["code"] == "too_many_subscriptions"
    assert again["type"] == "subscribed"


def test_recheck_ends_the_subscriptions_the_app_no_longer_allows():
    alice = signed_in("alice")
    user = get_user_model().objects.get(username="alice")

    async def scenario():
        socket_ = await opened(alice)
        await subscribe(socket_, "orders.42")
        FOLLOWERS[42].discard("alice")
        await sync_to_async(topics.recheck)(user)
        ended = await socket_.receive_json_from()
        await sync_to_async(topics.send)("orders.42", "after")
        nothing = await socket_.receive_nothing()
        still_open = await ask(socket_, {"type": "ping"})
        await socket_.disconnect()
        return ended, nothing, still_open

    ended, nothing, still_open = asyncio.run(scenario())
    assert ended == {"type": "unsubscribed", "topic": "orders.42", "reason": "forbidden"}
    assert nothing
    assert still_open == {"type": "pong"}


def test_an_access_change_ends_forbidden_subscriptions_before_closing():
    alice = signed_in("alice")

    async def scenario():
        socket_ = await opened(alice)
        await subscribe(socket_, "orders.42")
        await subscribe(socket_, "documents.open")
        await socket_.receive_json_from()  # presence
        user = await sync_to_async(get_user_model().objects.get)(username="alice")
        user.is_active = False
        await sync_to_async(user.save)()
        ended = await socket_.receive_json_from()
        closed = await socket_.receive_output()
        await socket_.disconnect()
        return ended, closed

    ended, closed = asyncio.run(scenario())
    assert ended == {"type": "unsubscribed", "topic": "orders.42", "reason": "forbidden"}
    assert closed == {"type": "websocket.close", "code": 4001, "reason": "Signed out"}


def test_presence_lists_each_user_once_and_says_join_and_leave():
    alice, bob = signed_in("alice"), signed_in("bob")
    second_alice = Client()
    assert second_alice.login(username="alice", password="pw-alice")

    async def scenario():
        watcher = await opened(bob)
        await subscribe(watcher, "documents.intro")
        first_list = await watcher.receive_json_from()
        tabs = [await opened(alice), await opened(second_alice)]
        lists = []
        for tab in tabs:
            await subscribe(tab, "documents.intro")
            lists.append(await tab.receive_json_from())
        joined = await watcher.receive_json_from()
        one_tab_quiet = await watcher.receive_nothing()
        listed = await sync_to_async(topics.presence)("documents.intro")
        await tabs[0].disconnect()
        still_there = await watcher.receive_nothing()
        await tabs[1].disconnect()
        left = await watcher.receive_json_from()
        await watcher.disconnect()
        return first_list, lists, joined, one_tab_quiet, listed, still_there, left

    first_list, lists, joined, one_tab_quiet, listed, still_there, left = asyncio.run(scenario())
    users = {"alice": None, "bob": None}
    for user in get_user_model().objects.all():
        users[user.username] = {"id": user.pk, "username": user.username}
    bob_listed = {**users["bob"], "meta": {}}  # no presence_update: the empty meta
    assert first_list == {"type": "presence", "topic": "documents.intro", "users": [bob_listed]}
    for listed_then in lists:
        assert sorted(u["username"] for u in listed_then["users"]) == ["alice", "bob"]
    alice_joined = {**users["alice"], "meta": {}}
    assert joined == {"type": "join", "topic": "documents.intro", "user": alice_joined}
    assert one_tab_quiet  # alice's second tab is no second join
    assert sorted(u["username"] for u in listed) == ["alice", "bob"]
    assert still_there  # one of alice's tabs is still open: no leave
    assert left == {"type": "leave", "topic": "documents.intro", "user": users["alice"]}


WATCHERS: set[str] = set()  # who the "lobby" topic's presence function lets see the list


def register_lobby() -> None:
    WATCHERS.clear()
    WATCHERS.add("alice")
    topics.register(
        "lobby", authorize=lambda user: True, presence=lambda user: user.username in WATCHERS
    )


def test_a_presence_function_counts_every_subscriber_but_tells_only_those_it_allows():
    """The page's "Who's online" (realtime.online): every signed-in page joins, staff see."""
    register_lobby()
    watcher_client, member_client, third = signed_in("alice"), signed_in("bob"), signed_in("carol")

    async def scenario():
        watcher = await opened(watcher_client)
        await subscribe(watcher, "lobby")
        first = await watcher.receive_json_from()
        hidden = await opened(member_client)
        answer = await subscribe(hidden, "lobby")
        bob_joined = await watcher.receive_json_from()
        other = await opened(third)
        await subscribe(other, "lobby")  # carol is no watcher either
        carol_joined = await watcher.receive_json_from()
        listed = await sync_to_async(topics.presence)("lobby")
        await other.disconnect()
        carol_left = await watcher.receive_json_from()
        member_heard_nothing = await hidden.receive_nothing(1)
        await watcher.disconnect()
        await hidden.disconnect()
        return first, answer, bob_joined, carol_joined, listed, carol_left, member_heard_nothing

    first, answer, bob_joined, carol_joined, listed, carol_left, quiet = asyncio.run(scenario())
    assert first["type"] == "presence" and [u["username"] for u in first["users"]] == ["alice"]
    assert answer["type"] == "subscribed"
    assert (bob_joined["type"], bob_joined["user"]["username"]) == ("join", "bob")
    assert (carol_joined["type"], carol_joined["user"]["username"]) == ("join", "carol")
    assert (carol_left["type"], carol_left["user"]["username"]) == ("leave", "carol")
    assert quiet  # bob heard no list, and not carol's join or leave
    assert sorted(u["username"] for u in listed) == ["alice", "bob", "carol"]


async def presence_hidden_from(username: str, topic: str, within: float = 5.0) -> None:
    """Wait until the fan-out's recheck (a task of its own) has stopped telling `username`'s
    sockets who comes and goes on `topic`."""
    deadline = time.monotonic() + within

    def hidden() -> bool:
        subscriptions = [
            fanout.fanout.streams.subscription(consumer, topic)
            for consumer in fanout.fanout.sockets
            if consumer.scope["user"].username == username
        ]
        return bool(subscriptions) and not any(s.presence for s in subscriptions if s)

    while not hidden():
        assert time.monotonic() < deadline, f"{username} still hears presence on {topic}"
        await asyncio.sleep(0.02)


def test_a_recheck_stops_telling_who_is_there_to_a_subscriber_no_longer_allowed():
    register_lobby()
    watcher_client, third = signed_in("alice"), signed_in("carol")

    async def scenario():
        watcher = await opened(watcher_client)
        await subscribe(watcher, "lobby")
        await watcher.receive_json_from()  # presence
        WATCHERS.discard("alice")
        alice = await sync_to_async(get_user_model().objects.get)(username="alice")
        await sync_to_async(topics.recheck)(alice)
        await presence_hidden_from("alice", "lobby")
        other = await opened(third)
        await subscribe(other, "lobby")
        quiet = await watcher.receive_nothing(1)
        still_subscribed = await ask(watcher, {"type": "ping"})
        await other.disconnect()
        await watcher.disconnect()
        return quiet, still_subscribed

    quiet, still_subscribed = asyncio.run(scenario())
    assert quiet  # carol's join was not told to alice any more
    assert still_subscribed == {"type": "pong"}


def test_a_presence_function_that_fails_shows_nothing_and_keeps_the_socket(caplog):
    def broken(user):
        raise RuntimeError("the app's check is broken")

    topics.register("fragile", authorize=lambda user: True, presence=broken)
    client = signed_in("alice")

    async def scenario():
        socket_ = await opened(client)
        answer = await subscribe(socket_, "fragile")
        quiet = await socket_.receive_nothing(0.5)
        pong = await ask(socket_, {"type": "ping"})
        await socket_.disconnect()
        return answer, quiet, pong

    answer, quiet, pong = asyncio.run(scenario())
    assert answer["type"] == "subscribed" and quiet and pong == {"type": "pong"}
    assert "presence() of topic fragile failed" in caplog.text


def test_presence_must_be_true_false_or_a_function():
    with pytest.raises(TypeError, match="presence must be"):
        topics.register("x.<int:n>", authorize=lambda user, n: True, presence="staff")


def test_presence_of_a_topic_that_is_not_a_presence_one_is_refused():
    with pytest.raises(ValueError, match="not a registered presence topic"):
        topics.presence("orders.42")


def test_subscribing_to_topics_never_sent_to_writes_nothing_and_their_epoch_holds():
    """A user allowed a pattern with endless names cannot make rows by subscribing; the epoch
    a subscriber was told is still the topic's once messages are sent to it."""
    from realtime.models import Topic

    alice = signed_in("alice")
    rows_before = Topic.objects.count()

    async def scenario():
        socket_ = await opened(alice)
        answers = []
        for n in range(5):
            answers.append(await subscribe(socket_, f"documents.never-{n}"))
            await socket_.receive_json_from()  # presence
        await socket_.disconnect()
        return answers

    answers = asyncio.run(scenario())
    assert [a["offset"] for a in answers] == [0] * 5
    assert Topic.objects.count() == rows_before
    topics.send("documents.never-0", "first")
    assert Topic.objects.get(name="documents.never-0").epoch == answers[0]["epoch"]


def test_a_replay_larger_than_half_the_unsent_cap_fails_instead_of_dropping_the_socket(settings):
    """100 messages of 64 KiB would be 6.4 MB at once: the socket would be dropped for not
    reading fast enough, and its client would resume the same replay again, for ever."""
    settings.REALTIME_WS_MAX_UNSENT_BYTES = 100_000
    alice = signed_in("alice")
    for _ in range(4):
        topics.send("orders.42", "x" * 20_000)  # 4 x 20 KB > 50,000 bytes
    epoch = registry.streams.position("orders.42")[0]

    async def scenario():
        socket_ = await opened(alice)
        since = {"epoch": epoch, "offset": 0}
        answers = await received_after(
            socket_, {"type": "subscribe", "topic": "orders.42", "since": since}, 2
        )
        since = {"epoch": epoch, "offset": 2}  # 2 x 20 KB: within the budget
        again = await received_after(
            socket_, {"type": "subscribe", "topic": "orders.42", "since": since}, 3
        )
        await socket_.disconnect()
        return answers, again

    (failed, subscribed), again = asyncio.run(scenario())
    assert (failed["type"], failed["reason"]) == ("resume_failed", "too_many")
    assert subscribed["offset"] == 4
    assert [m["type"] for m in again] == ["subscribed", "message", "message"]
