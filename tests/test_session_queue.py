"""The fan-out's queue of session checks (realtime.websocket.sessions.SessionChecks): it holds
the open signed-in sockets only, so a client reconnecting in a loop cannot grow a worker's
memory. The queue itself, then 1,000 signed-in connect/close cycles through the whole
application, in process."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.test import Client

from project.asgi import application
from realtime.messaging.fanout import fanout
from realtime.websocket.sessions import SessionChecks
from tests.helpers import Communicator

CYCLES = 1000


def test_a_socket_leaves_the_queue_when_forgotten_or_taken_and_the_rest_wait_their_turn():
    checks = SessionChecks()
    a, b, c = object(), object(), object()
    checks.look_by(a, "ka", 10.0)
    checks.look_by(b, "kb", 20.0)
    checks.look_by(c, "kc", 5.0)
    checks.forget(c)  # closed before its turn
    checks.forget(c)  # twice is harmless
    assert checks.take_due(15.0) == [(a, "ka")]
    assert len(checks) == 1
    checks.look_by(b, "kb", 30.0)  # looked at again later: one entry still
    assert checks.take_due(25.0) == [] and len(checks) == 1
    assert checks.take_due(30.0) == [(b, "kb")] and len(checks) == 0


@pytest.fixture
def alice_cookie(transactional_db) -> bytes:
    get_user_model().objects.create_user("alice", password="pw-alice")
    client = Client()
    assert client.login(username="alice", password="pw-alice")
    yield f"sessionid={client.cookies['sessionid'].value}".encode()
    async_to_sync(get_channel_layer().flush)()


def socket_for(cookie: bytes) -> Communicator:
    headers = [(b"origin", b"https://localhost"), (b"host", b"localhost"), (b"cookie", cookie)]

    async def over_tls(scope, receive, send):
        return await application({**scope, "scheme": "wss"}, receive, send)

    return Communicator(over_tls, "/ws/", headers=headers)


async def opened(cookie: bytes) -> Communicator:
    communicator = socket_for(cookie)
    assert (await communicator.connect())[0]
    welcome = await communicator.receive_json_from()
    assert welcome["type"] == "welcome" and welcome["user"] is not None
    return communicator


def test_connect_close_cycles_of_a_signed_in_socket_leave_the_queue_no_larger_than_open_ones(
    alice_cookie,
):
    async def scenario():
        staying = [await opened(alice_cookie) for _ in range(3)]
        largest = 0
        for _ in range(CYCLES):
            communicator = await opened(alice_cookie)
            largest = max(largest, len(fanout.sign_outs.session_checks))
            await communicator.disconnect()
        await asyncio.sleep(0)
        with_three = len(fanout.sign_outs.session_checks)
        for communicator in staying:
            await communicator.disconnect()
        await asyncio.sleep(0)
        return largest, with_three, len(fanout.sign_outs.session_checks)

    assert asyncio.run(scenario()) == (4, 3, 0)
