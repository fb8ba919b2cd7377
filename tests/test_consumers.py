"""The /ws/ consumer, driven through the whole ASGI application with Communicator."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer

from project.asgi import application
from realtime import broadcast
from realtime.server.worker import worker_id
from tests.helpers import Communicator

# Channels closes stale database connections around each consumer event, so even consumers
# that run no query touch the connection.
pytestmark = pytest.mark.django_db(transaction=True)

SAME_ORIGIN = [(b"origin", b"https://localhost"), (b"host", b"localhost")]


@pytest.fixture(autouse=True)
def _empty_channel_layer():
    yield
    async_to_sync(get_channel_layer().flush)()


def with_scheme(scheme: str, tls: dict | None = None):
    """The application as a server that reports the transport's scheme would call it."""

    async def app(scope, receive, send):
        extra = {"scheme": scheme}
        if tls:
            extra["extensions"] = {"tls": tls}
        return await application({**scope, **extra}, receive, send)

    return app


async def open_socket(app=None, headers=SAME_ORIGIN) -> Communicator:
    communicator = Communicator(app or with_scheme("wss"), "/ws/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


def test_it_welcomes_a_plain_socket_as_not_secure(settings):
    settings.REALTIME_REQUIRE_TLS = False  # as with DJANGO_DEBUG=1

    async def scenario():
        communicator = await open_socket(with_scheme("ws"))
        welcome = await communicator.receive_json_from()
        await communicator.disconnect()
        return welcome

    welcome = asyncio.run(scenario())
    assert welcome["type"] == "welcome"
    assert welcome["secure"] is False
    assert welcome["scheme"] == "ws"
    assert welcome["worker"] == worker_id()
    assert welcome["user"] is None


def test_it_welcomes_a_tls_socket_as_secure():
    tls = {"tls_version": "TLSv1.3", "cipher_suite": "TLS_AES_256_GCM_SHA384"}

    async def scenario():
        communicator = await open_socket(with_scheme("wss", tls))
        welcome = await communicator.receive_json_from()
        await communicator.disconnect()
        return welcome

    welcome = asyncio.run(scenario())
    assert welcome["secure"] is True
    assert welcome["tls"] == {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}


def test_it_answers_ping_with_pong():
    async def scenario():
        communicator = await open_socket()
        await communicator.receive_json_from()
        await communicator.send_json_to({"type": "ping"})
        reply = await communicator.receive_json_from()
        await communicator.disconnect()
        return reply

    assert asyncio.run(scenario()) == {"type": "pong"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"text_data": "{not json"}, "invalid_json"),
        ({"text_data": "[]"}, "not_an_object"),
        ({"text_data": '{"kind": "ping"}'}, "missing_type"),
        ({"text_data": '{"type": "self-destruct"}'}, "unknown_type"),
        ({"bytes_data": b"\x00\x01"}, "binary_not_supported"),
    ],
)
def test_bad_input_gets_an_error_and_the_socket_stays_open(frame, code):
    async def scenario():
        communicator = await open_socket()
        await communicator.receive_json_from()
        await communicator.send_to(**frame)
        error = await communicator.receive_json_from()
        await communicator.send_json_to({"type": "ping"})
        after = await communicator.receive_json_from()
        await communicator.disconnect()
        return error, after

    error, after = asyncio.run(scenario())
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["detail"]
    assert after == {"type": "pong"}


def test_a_broadcast_reaches_every_socket_once_with_its_offset():
    async def scenario():
        sockets = [await open_socket() for _ in range(3)]
        for communicator in sockets:
            await communicator.receive_json_from()
            # Answered once the worker's fan-out has registered the socket.
            await communicator.send_json_to({"type": "ping"})
            assert (await communicator.receive_json_from())["type"] == "pong"
        sent = await sync_to_async(broadcast.send)("to everyone")
        received = [await communicator.receive_json_from() for communicator in sockets]
        nothing_more = [await communicator.receive_nothing() for communicator in sockets]
        for communicator in sockets:
            await communicator.disconnect()
        return sent, received, nothing_more

    sent, received, nothing_more = asyncio.run(scenario())
    assert [(m["id"], m["message"]) for m in received] == [(sent.pk, "to everyone")] * 3
    assert len({m["offset"] for m in received}) == 1
    assert all(nothing_more)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"origin", b"https://evil.example"), (b"host", b"localhost")],
        [(b"origin", b"https://localhost.evil.example"), (b"host", b"localhost")],
        [(b"host", b"localhost")],
    ],
    ids=["foreign", "look-alike", "missing"],
)
def test_a_socket_from_another_origin_is_refused(headers):
    async def scenario():
        communicator = Communicator(with_scheme("wss"), "/ws/", headers=headers)
        connected, _ = await communicator.connect()
        await communicator.wait()
        return connected

    assert asyncio.run(scenario()) is False
