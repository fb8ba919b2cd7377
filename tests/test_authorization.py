"""Per-message authorization on /ws/: subscribing to audiences, staff-only broadcasts, and
sockets closed when their session signs out. Through the whole application, in process."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.test import Client

from project.asgi import application
from realtime import broadcast
from realtime.models import Broadcast
from tests.helpers import Communicator

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _empty_channel_layer():
    yield
    async_to_sync(get_channel_layer().flush)()


def signed_in(name: str, *, staff: bool = False) -> Client:
    get_user_model().objects.create_user(name, password="pw-" + name, is_staff=staff)
    client = Client()
    assert client.login(username=name, password="pw-" + name)
    return client


def socket_for(client: Client | None = None, path: str = "/ws/") -> Communicator:
    """A same-origin WSS socket, anonymous or carrying a test client's session cookie."""
    headers = [(b"origin", b"https://localhost"), (b"host", b"localhost")]
    if client is not None:
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))

    async def over_tls(scope, receive, send):
        return await application({**scope, "scheme": "wss"}, receive, send)

    return Communicator(over_tls, path, headers=headers)


async def opened(client: Client | None = None) -> Communicator:
    communicator = socket_for(client)
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "welcome"
    return communicator


async def ask(communicator: Communicator, message: dict) -> dict:
    await communicator.send_json_to(message)
    return await communicator.receive_json_from()


async def broadcasts_seen(communicator: Communicator) -> list[str]:
    seen = []
    while not await communicator.receive_nothing(timeout=0.3):
        message = await communicator.receive_json_from()
        if message["type"] == "broadcast":
            seen.append(message["message"])
    return seen


def test_an_anonymous_socket_cannot_subscribe_itself_to_staff():
    async def scenario():
        socket_ = await opened()
        refused = await ask(socket_, {"type": "subscribe", "audience": "staff"})
        other = await ask(socket_, {"type": "subscribe", "audience": "martians"})
        await sync_to_async(broadcast.send)("for staff", audience="staff")
        seen = await broadcasts_seen(socket_)
        alive = await ask(socket_, {"type": "ping"})
        await socket_.disconnect()
        return refused, other, seen, alive

    refused, other, seen, alive = asyncio.run(scenario())
    assert refused["type"] == "error" and refused["code"] == "forbidden" and refused["detail"]
    assert other["code"] == "forbidden"
    assert seen == []
    assert alive == {"type": "pong"}


def test_a_signed_in_user_cannot_subscribe_to_staff_but_confirms_its_own_audiences():
    bob = signed_in("bob")

    async def scenario():
        socket_ = await opened(bob)
        replies = [
            await ask(socket_, {"type": "subscribe", "audience": audience})
            for audience in ("staff", "authenticated", "authenticated", "everyone")
        ]
        await socket_.disconnect()
        return replies

    replies = asyncio.run(scenario())
    assert replies[0]["code"] == "forbidden"
    assert replies[1:] == [
        {"type": "subscribed", "audience": "authenticated"},
        {"type": "subscribed", "audience": "authenticated"},
        {"type": "subscribed", "audience": "everyone"},
    ]


def test_staff_may_subscribe_to_staff():
    alice = signed_in("alice", staff=True)

    async def scenario():
        socket_ = await opened(alice)
        reply = await ask(socket_, {"type": "subscribe", "audience": "staff"})
        await socket_.disconnect()
        return reply

    assert asyncio.run(scenario()) == {"type": "subscribed", "audience": "staff"}


@pytest.mark.parametrize("audience", [None, 7, ["staff"]])
def test_a_subscribe_without_an_audience_name_is_invalid(audience):
    async def scenario():
        socket_ = await opened()
        reply = await ask(socket_, {"type": "subscribe", "audience": audience})
        await socket_.disconnect()
        return reply

    assert asyncio.run(scenario())["code"] == "invalid_subscribe"


@pytest.mark.parametrize("who", ["anonymous", "user"])
def test_only_staff_may_broadcast(who):
    client = signed_in("bob") if who == "user" else None

    async def scenario():
        socket_ = await opened(client)
        reply = await ask(socket_, {"type": "broadcast", "message": "hi", "audience": "everyone"})
        malformed = await ask(socket_, {"type": "broadcast", "message": 3})
        await socket_.disconnect()
        return reply, malformed

    reply, malformed = asyncio.run(scenario())
    assert reply["type"] == "error" and reply["code"] == "forbidden"
    assert malformed["code"] == "forbidden"  # others learn nothing about what staff may send
    assert not Broadcast.objects.exists()


def test_a_staff_broadcast_is_stored_as_theirs_and_reaches_its_audience():
    alice, bob = signed_in("alice", staff=True), signed_in("bob")

    async def scenario():
        staff, user, anonymous = await opened(alice), await opened(bob), await opened()
        request = {
            "type": "broadcast",
            "message": "Deploy at six",
            "level": "warning",
            "audience": "authenticated",
        }
        await staff.send_json_to(request)
        # The sender's own copy may arrive before or after the acknowledgement.
        first, second = await staff.receive_json_from(), await staff.receive_json_from()
        reply = first if first["type"] == "broadcast_sent" else second
        own_copy = [m["message"] for m in (first, second) if m["type"] == "broadcast"]
        seen = [
            own_copy + await broadcasts_seen(staff),
            await broadcasts_seen(user),
            await broadcasts_seen(anonymous),
        ]
        for communicator in (staff, user, anonymous):
            await communicator.disconnect()
        return reply, seen

    reply, seen = asyncio.run(scenario())
    sent = Broadcast.objects.get()
    assert reply == {"type": "broadcast_sent", "id": sent.pk}
    assert (sent.message, sent.level, sent.audience) == (
        "Deploy at six",
        "warning",
        "authenticated",
    )
    assert sent.sent_by.username == "alice"
    assert seen == [["Deploy at six"], ["Deploy at six"], []]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "x" * 2001}, "message"),
        ({"message": "hi", "level": "panic"}, "level"),
        ({"message": "hi", "audience": "martians"}, "audience"),
        ({"message": ["hi"]}, None),
        ({"message": "hi", "level": None}, None),
    ],
)
def test_an_invalid_staff_broadcast_is_refused_and_not_stored(message, field):
    alice = signed_in("alice", staff=True)

    async def scenario():
        socket_ = await opened(alice)
        reply = await ask(socket_, {"type": "broadcast", **message})
        await socket_.disconnect()
        return reply

    reply = asyncio.run(scenario())
    assert reply["type"] == "error" and reply["code"] == "invalid_broadcast"
    if field:
        assert reply["detail"].startswith(f"{field}:")
    assert not Broadcast.objects.exists()


def test_staff_demoted_after_connecting_can_no_longer_broadcast():
    alice = signed_in("alice", staff=True)

    async def scenario():
        socket_ = await opened(alice)
        await sync_to_async(get_user_model().objects.filter(username="alice").update)(
            is_staff=False
        )
        reply = await ask(socket_, {"type": "broadcast", "message": "still staff?"})
        await socket_.disconnect()
        return reply

    assert asyncio.run(scenario())["code"] == "forbidden"
    assert not Broadcast.objects.exists()


def test_signing_out_closes_that_sessions_sockets_with_4001_and_no_others():
    alice, bob = signed_in("alice", staff=True), signed_in("bob")

    async def scenario():
        first, second, other = await opened(alice), await opened(alice), await opened(bob)
        anonymous = await opened()
        await sync_to_async(alice.logout)()
        closes = [await first.receive_output(), await second.receive_output()]
        untouched = [await ask(s, {"type": "ping"}) for s in (other, anonymous)]
        for communicator in (first, second, other, anonymous):
            await communicator.disconnect()
        return closes, untouched

    closes, untouched = asyncio.run(scenario())
    assert closes == [{"type": "websocket.close", "code": 4001, "reason": "Signed out"}] * 2
    assert untouched == [{"type": "pong"}] * 2


def test_the_session_key_never_reaches_the_channel_layer(monkeypatch):
    alice = signed_in("alice")
    key = alice.cookies["sessionid"].value
    layer = get_channel_layer()
    sent = []
    group_send = layer.group_send

    async def recording_group_send(group, message):
        sent.append((group, message))
        await group_send(group, message)

    monkeypatch.setattr(layer, "group_send", recording_group_send)

    async def scenario():
        socket_ = await opened(alice)
        # Registered, so the fan-out has joined its groups in this event loop (a new one per
        # test): a sign-out sent before a worker's first join would reach no one.
        assert await ask(socket_, {"type": "ping"}) == {"type": "pong"}
        await sync_to_async(alice.logout)()
        closed = await socket_.receive_output()
        await socket_.disconnect()
        return closed, list(layer.groups)

    closed, groups = asyncio.run(scenario())
    assert closed["code"] == 4001
    # The fan-out's own checks aside (realtime.messaging.fanout), the sign-out is the only event.
    sent = [(group, event) for group, event in sent if event["type"] != "realtime.fanout.probe"]
    assert [group for group, _ in sent] == ["realtime.sessions"]
    assert sent[0][1]["type"] == "realtime.logout"
    assert not any(key in repr(item) for item in [*sent, *groups])


def test_a_socket_has_no_channel_of_its_own_on_the_layer():
    """Broadcasts and sign-outs reach sockets through their worker's fan-out: opening 20
    sockets, signed in or not, adds no channel and no group member (no Redis subscription)."""
    alice = signed_in("alice")
    layer = get_channel_layer()

    async def scenario():
        first = await opened()
        await ask(first, {"type": "ping"})  # answered once its worker's fan-out is in place
        before = {group: set(members) for group, members in layer.groups.items()}
        sockets = [await opened(alice if n % 2 else None) for n in range(20)]
        after = {group: set(members) for group, members in layer.groups.items()}
        channels = set(layer.channels)
        for socket_ in [first, *sockets]:
            await socket_.disconnect()
        return before, after, channels

    before, after, channels = asyncio.run(scenario())
    assert after == before
    assert all(channel.startswith("realtime.fanout.") for channel in channels)


def change_user(name: str, **fields) -> None:
    user = get_user_model().objects.get(username=name)
    for field, value in fields.items():
        if field == "password":
            user.set_password(value)
        else:
            setattr(user, field, value)
    user.save()


async def closed_or_alive(communicator: Communicator) -> dict:
    """The close a socket got, or the pong a live one answers."""
    if not await communicator.receive_nothing(timeout=0.3):
        return await communicator.receive_output()
    return await ask(communicator, {"type": "ping"})


SIGNED_OUT = {"type": "websocket.close", "code": 4001, "reason": "Signed out"}
ALIVE = {"type": "pong"}


@pytest.mark.parametrize(
    "change",
    [
        {"is_staff": False},  # demoted: its sockets were given the staff audience
        {"is_active": False},
        {"password": "a-new-password"},
    ],
    ids=["demoted", "deactivated", "new-password"],
)
def test_a_change_of_access_closes_every_socket_of_that_user_only(change):
    alice_phone, alice_laptop = signed_in("alice", staff=True), Client()
    assert alice_laptop.login(username="alice", password="pw-alice")
    bob = signed_in("bob", staff=True)

    async def scenario():
        sockets = [await opened(c) for c in (alice_phone, alice_laptop, bob)] + [await opened()]
        for socket_ in sockets:
            await ask(socket_, {"type": "ping"})  # registered with the fan-out by now
        await sync_to_async(change_user)("alice", **change)
        outcome = [await closed_or_alive(s) for s in sockets]
        for socket_ in sockets:
            await socket_.disconnect()
        return outcome

    assert asyncio.run(scenario()) == [SIGNED_OUT, SIGNED_OUT, ALIVE, ALIVE]


def test_a_change_that_does_not_touch_access_closes_nothing():
    alice = signed_in("alice", staff=True)

    async def scenario():
        socket_ = await opened(alice)
        await ask(socket_, {"type": "ping"})
        await sync_to_async(change_user)("alice", first_name="Alice", email="a@example.org")
        await sync_to_async(signed_in)("carol")  # a login elsewhere writes only last_login
        outcome = await closed_or_alive(socket_)
        await socket_.disconnect()
        return outcome

    assert asyncio.run(scenario()) == ALIVE


def test_deleting_a_user_closes_their_sockets():
    alice = signed_in("alice")

    async def scenario():
        socket_ = await opened(alice)
        await ask(socket_, {"type": "ping"})
        await sync_to_async(get_user_model().objects.filter(username="alice").delete)()
        outcome = await closed_or_alive(socket_)
        await socket_.disconnect()
        return outcome

    assert asyncio.run(scenario()) == SIGNED_OUT


def test_a_demoted_socket_receives_no_staff_broadcast_before_it_closes():
    alice = signed_in("alice", staff=True)

    async def scenario():
        socket_ = await opened(alice)
        await ask(socket_, {"type": "ping"})
        await sync_to_async(change_user)("alice", is_staff=False)
        await sync_to_async(broadcast.send)("staff only", audience="staff")
        seen = []
        while True:
            output = await socket_.receive_output(timeout=1)
            if output["type"] == "websocket.close":
                break
            seen.append(output)
        await socket_.disconnect()
        return seen

    assert asyncio.run(scenario()) == []


# --- Sessions that end without a sign-out ------------------------------------------------------

SESSION_ENDED = {"type": "websocket.close", "code": 4001, "reason": "Session ended"}


def session_of(client: Client):
    from django.contrib.sessions.backends.db import SessionStore

    return SessionStore(client.cookies["sessionid"].value)


def test_a_socket_is_closed_when_its_session_expires_and_not_before():
    from realtime.messaging.fanout import fanout

    bob = signed_in("bob")
    session = session_of(bob)
    session.set_expiry(60)
    session.save()
    now = [time.time()]

    async def scenario():
        fanout.sign_outs.wall_clock = lambda: now[0]
        socket_ = await opened(bob)
        assert await ask(socket_, {"type": "ping"}) == ALIVE  # registered by now
        now[0] += 59  # not yet: nothing is due
        early = await fanout.sign_outs.end_sessions()
        now[0] += 2  # past the session's end
        closed = await fanout.sign_outs.end_sessions()
        result = early, closed, await closed_or_alive(socket_)
        await socket_.disconnect()  # as the client's side does: its presence ends
        return result

    try:
        assert asyncio.run(scenario()) == (0, 1, SESSION_ENDED)
    finally:
        fanout.sign_outs.wall_clock = time.time


def test_a_session_deleted_from_the_store_closes_its_socket_by_the_next_look(settings):
    from django.contrib.sessions.models import Session

    from realtime.messaging.fanout import fanout

    settings.REALTIME_SESSION_CHECK = 30
    bob, carol = signed_in("bob"), signed_in("carol")
    now = [time.time()]

    async def scenario():
        fanout.sign_outs.wall_clock = lambda: now[0]
        bobs, carols = await opened(bob), await opened(carol)
        for socket_ in (bobs, carols):
            assert await ask(socket_, {"type": "ping"}) == ALIVE  # registered by now
        key = bob.cookies["sessionid"].value
        await sync_to_async(Session.objects.filter(session_key=key).delete)()
        now[0] += 31  # the session check interval: both are looked at, one is gone
        closed = await fanout.sign_outs.end_sessions()
        result = closed, await closed_or_alive(bobs), await closed_or_alive(carols)
        now[0] += 31  # carol's is looked at again, and is still there
        result = (*result, await fanout.sign_outs.end_sessions())
        for socket_ in (bobs, carols):
            await socket_.disconnect()
        return result

    try:
        assert asyncio.run(scenario()) == (1, SESSION_ENDED, ALIVE, 0)
    finally:
        fanout.sign_outs.wall_clock = time.time


def test_an_expiring_session_closes_its_socket_in_real_time(settings):
    """The fan-out's own loop, run past a 2 s session with checks every second."""
    settings.REALTIME_FANOUT_CHECK = 1
    bob = signed_in("bob")
    session = session_of(bob)
    session.set_expiry(2)
    session.save()

    async def scenario():
        socket_ = await opened(bob)
        closed = await socket_.receive_output(timeout=10)
        await socket_.disconnect()
        return closed

    assert asyncio.run(scenario()) == SESSION_ENDED
