"""realtime.broadcast: store, publish after commit, audiences, in-process (in-memory layer)."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from project.asgi import application
from realtime import broadcast
from realtime.messaging import streams
from realtime.models import MAX_MESSAGE_LENGTH, Broadcast
from tests.helpers import Communicator

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _empty_channel_layer():
    yield
    async_to_sync(get_channel_layer().flush)()


def make_user(name: str, *, staff: bool = False):
    return get_user_model().objects.create_user(name, password="pw-" + name, is_staff=staff)


def socket_for(client=None, query: str = "") -> Communicator:
    """A same-origin socket, anonymous or carrying a test client's session cookie."""
    headers = [(b"origin", b"https://localhost"), (b"host", b"localhost")]
    if client is not None:
        cookie = f"sessionid={client.cookies['sessionid'].value}"
        headers.append((b"cookie", cookie.encode()))

    async def with_scheme(scope, receive, send):
        return await application({**scope, "scheme": "wss"}, receive, send)

    return Communicator(with_scheme, f"/ws/?{query}" if query else "/ws/", headers=headers)


async def open_all(sockets):
    for communicator in sockets:
        assert (await communicator.connect())[0]
        await communicator.receive_json_from()  # welcome
        # Answered once the worker's fan-out has registered the socket.
        await communicator.send_json_to({"type": "ping"})
        assert (await communicator.receive_json_from())["type"] == "pong"


async def close_all(sockets):
    for communicator in sockets:
        await communicator.disconnect()


def test_send_stores_and_delivers_to_every_socket():
    async def scenario():
        sockets = [socket_for() for _ in range(3)]
        await open_all(sockets)
        sent = await sync_to_async(broadcast.send)("Deploy at six", level="warning")
        received = [await s.receive_json_from() for s in sockets]
        await close_all(sockets)
        return sent, received

    sent, received = asyncio.run(scenario())
    assert Broadcast.objects.get(pk=sent.pk).published_at is not None
    assert Broadcast.objects.get(pk=sent.pk).recipients == 3
    for message in received:
        assert message == {
            "type": "broadcast",
            "id": sent.pk,
            "message": "Deploy at six",
            "level": "warning",
            "audience": "everyone",
            "sent_at": sent.sent_at.isoformat(),
            "offset": message["offset"],
        }


def test_ids_increase():
    first, second = broadcast.send("one"), broadcast.send("two")
    assert second.pk > first.pk


def test_audiences_are_enforced_on_the_server(client):
    make_user("alice", staff=True)
    make_user("bob")
    alice, bob = client, type(client)()
    alice.login(username="alice", password="pw-alice")
    bob.login(username="bob", password="pw-bob")

    async def scenario():
        anonymous, user, staff = socket_for(), socket_for(bob), socket_for(alice)
        await open_all([anonymous, user, staff])
        for audience in ("staff", "authenticated", "everyone"):
            await sync_to_async(broadcast.send)(f"to {audience}", audience=audience)
        seen = {}
        for name, communicator in (("anonymous", anonymous), ("user", user), ("staff", staff)):
            seen[name] = []
            while not await communicator.receive_nothing(timeout=0.3):
                seen[name].append((await communicator.receive_json_from())["message"])
        await close_all([anonymous, user, staff])
        return seen

    seen = asyncio.run(scenario())
    assert seen["anonymous"] == ["to everyone"]
    assert seen["user"] == ["to authenticated", "to everyone"]
    assert seen["staff"] == ["to staff", "to authenticated", "to everyone"]


def test_nothing_is_published_before_the_transaction_commits():
    async def scenario():
        sockets = [socket_for()]
        await open_all(sockets)

        def send_in_transaction():
            with transaction.atomic():
                broadcast.send("after commit")
                return get_channel_layer()

        # Published by on_commit, right after the atomic block: exactly one message.
        await sync_to_async(send_in_transaction)()
        message = await sockets[0].receive_json_from()
        nothing_more = await sockets[0].receive_nothing()
        await close_all(sockets)
        return message, nothing_more

    message, nothing_more = asyncio.run(scenario())
    assert message["message"] == "after commit"
    assert nothing_more


def test_a_rolled_back_broadcast_is_neither_stored_nor_sent():
    async def scenario():
        sockets = [socket_for()]
        await open_all(sockets)

        def send_and_roll_back():
            with pytest.raises(RuntimeError), transaction.atomic():
                broadcast.send("never")
                raise RuntimeError("rolled back")

        await sync_to_async(send_and_roll_back)()
        nothing = await sockets[0].receive_nothing(timeout=0.3)
        await close_all(sockets)
        return nothing

    assert asyncio.run(scenario())
    assert not Broadcast.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "x" * (MAX_MESSAGE_LENGTH + 1)}, "message"),
        ({"message": "hi", "level": "panic"}, "level"),
        ({"message": "hi", "audience": "martians"}, "audience"),
    ],
)
def test_bad_broadcasts_are_refused_before_storing(kwargs, field):
    message = kwargs.pop("message")
    with pytest.raises(ValidationError) as info:
        broadcast.send(message, **kwargs)
    assert field in info.value.message_dict
    assert not Broadcast.objects.exists()


def test_the_message_is_serialized_once_for_all_sockets(monkeypatch):
    calls = []
    real_encode = streams.wire.encode

    def counting_encode(message):
        calls.append(message)
        return real_encode(message)

    monkeypatch.setattr(streams.wire, "encode", counting_encode)

    async def scenario():
        sockets = [socket_for() for _ in range(5)]
        await open_all(sockets)
        await sync_to_async(broadcast.send)("once")
        texts = [await s.receive_from() for s in sockets]
        await close_all(sockets)
        return texts

    texts = asyncio.run(scenario())
    assert [m["type"] for m in calls if m["type"] == "broadcast"] == ["broadcast"]
    assert all(json.loads(t)["message"] == "once" for t in texts)
