"""realtime.websocket.limits: rate limit, idle timeout and per-address cap, with
Communicator."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from realtime.common.rates import TokenBucket
from realtime.server.closing import sendable
from realtime.websocket import limits
from tests.helpers import Communicator


def echo_app(seen: list[dict]):
    """A bare WebSocket app that accepts, echoes text, and records how it ended."""

    async def app(scope, receive, send):
        while True:
            event = await receive()
            if event["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif event["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": event["text"]})
            else:
                seen.append(event)
                return

    return app


def from_address(app, address: str, headers=()):
    async def with_client(scope, receive, send):
        scope = {**scope, "client": (address, 50000), "headers": list(headers)}
        return await app(scope, receive, send)

    return with_client


@pytest.fixture
def slow_rate(settings):
    settings.REALTIME_WS_RATE = 1
    settings.REALTIME_WS_BURST = 3


def test_messages_within_the_burst_pass(slow_rate):
    async def scenario():
        communicator = Communicator(limits.RateLimitMiddleware(echo_app([])), "/ws/")
        await communicator.connect()
        for n in range(3):
            await communicator.send_to(text_data=str(n))
        echoed = [await communicator.receive_from() for _ in range(3)]
        await communicator.disconnect()
        return echoed

    assert asyncio.run(scenario()) == ["0", "1", "2"]


def test_a_message_over_the_rate_gets_rate_limited_and_is_dropped(slow_rate):
    async def scenario():
        seen: list[dict] = []
        communicator = Communicator(limits.RateLimitMiddleware(echo_app(seen)), "/ws/")
        await communicator.connect()
        for n in range(4):
            await communicator.send_to(text_data=str(n))
        replies = [await communicator.receive_from() for _ in range(4)]
        await communicator.disconnect()
        return replies

    replies = asyncio.run(scenario())
    assert replies[:3] == ["0", "1", "2"]
    error = json.loads(replies[3])
    assert error["type"] == "error" and error["code"] == "rate_limited"
    assert "1 a second" in error["detail"]


def test_a_dropped_publish_or_call_is_answered_by_its_id_or_ref(slow_rate):
    """A client waits for a publish's `published` and a call's `reply`: one dropped over the
    rate is answered naming it, so the client can fail it instead of waiting for ever."""
    dropped = [
        {"type": "publish", "topic": "chat.a", "id": "p1", "data": 1},
        {"type": "call", "name": "cart.add", "ref": 9},
        {"type": "ping"},
        "not json {",
    ]

    async def scenario():
        communicator = Communicator(limits.RateLimitMiddleware(echo_app([])), "/ws/")
        await communicator.connect()
        for n in range(3):  # the burst
            await communicator.send_to(text_data=str(n))
        for message in dropped:
            text = message if isinstance(message, str) else json.dumps(message)
            await communicator.send_to(text_data=text)
        replies = [await communicator.receive_from() for _ in range(3 + len(dropped))]
        await communicator.disconnect()
        return [json.loads(reply) for reply in replies[3:]]

    publish, call, ping, garbage = asyncio.run(scenario())
    assert publish["type"] == "error" and publish["code"] == "rate_limited"
    assert (publish["topic"], publish["id"], publish["request"]) == ("chat.a", "p1", "publish")
    assert call["type"] == "reply" and call["ref"] == 9
    assert call["error"]["code"] == "rate_limited"
    assert ping["type"] == garbage["type"] == "error"
    assert ping["code"] == garbage["code"] == "rate_limited" and "id" not in ping


def test_a_client_that_keeps_flooding_is_closed_with_1008(slow_rate):
    async def scenario():
        seen: list[dict] = []
        communicator = Communicator(limits.RateLimitMiddleware(echo_app(seen)), "/ws/")
        await communicator.connect()
        for n in range(3 + 2 * 3 + 1):
            await communicator.send_to(text_data=str(n))
        outputs = [await communicator.receive_output() for _ in range(3 + 2 * 3 + 1)]
        await communicator.wait()
        return outputs, seen

    outputs, seen = asyncio.run(scenario())
    errors = [json.loads(o["text"])["code"] for o in outputs[3:-1]]
    assert errors == ["rate_limited"] * 6
    assert outputs[-1] == {"type": "websocket.close", "code": 1008, "reason": "Rate limit exceeded"}
    # The app was told the socket is gone, so it cleaned up and ended.
    assert seen == [{"type": "websocket.disconnect", "code": 1008}]


def test_the_bucket_refills_and_forgives_a_client_that_paused():
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=2, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    assert bucket.dropped == 1
    now[0] += 0.5  # one token back
    assert bucket.take() and not bucket.take()
    assert bucket.dropped == 2
    now[0] += 10  # full again: earlier drops are forgiven
    assert bucket.take()
    assert bucket.dropped == 0


def test_rate_zero_turns_the_limit_off(settings):
    settings.REALTIME_WS_RATE = 0

    async def scenario():
        communicator = Communicator(limits.RateLimitMiddleware(echo_app([])), "/ws/")
        await communicator.connect()
        for n in range(100):
            await communicator.send_to(text_data=str(n))
        echoed = [await communicator.receive_from() for _ in range(100)]
        await communicator.disconnect()
        return echoed

    assert asyncio.run(scenario()) == [str(n) for n in range(100)]


def test_a_silent_socket_is_closed_with_4000_after_the_idle_timeout(settings):
    settings.REALTIME_WS_IDLE_TIMEOUT = 1

    async def scenario():
        seen: list[dict] = []
        app = limits.IdleTimeoutMiddleware(echo_app(seen))
        communicator = Communicator(app, "/ws/")
        await communicator.connect()
        started = time.monotonic()
        for _ in range(3):  # talking keeps it open
            await asyncio.sleep(0.6)
            await communicator.send_to(text_data="still here")
            assert await communicator.receive_from() == "still here"
        closed = await communicator.receive_output(timeout=3)
        return closed, time.monotonic() - started, seen

    closed, elapsed, seen = asyncio.run(scenario())
    assert closed == {"type": "websocket.close", "code": 4000, "reason": "Idle for 1 s"}
    assert 2.5 < elapsed < 4
    assert seen == [{"type": "websocket.disconnect", "code": 4000}]


def test_time_spent_handling_a_message_is_not_idle_time():
    """Only waiting for the client counts: a consumer busy for twice the timeout is not closed."""

    async def scenario():
        deadline = limits.IdleDeadline(0.2)
        queue: asyncio.Queue[dict] = asyncio.Queue()
        queue.put_nowait({"type": "websocket.receive", "text": "work"})
        first = await deadline.receive(queue.get)
        await asyncio.sleep(0.5)  # busy with it
        queue.put_nowait({"type": "websocket.receive", "text": "more"})
        second = await deadline.receive(queue.get)
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await deadline.receive(queue.get)
        waited = asyncio.get_running_loop().time() - started
        deadline.cancel()
        return first["text"], second["text"], waited

    first, second, waited = asyncio.run(scenario())
    assert (first, second) == ("work", "more")
    assert 0.15 < waited < 0.6


def test_cancelling_a_waiting_socket_is_not_mistaken_for_idleness():
    async def scenario():
        deadline = limits.IdleDeadline(5)
        waiting = asyncio.create_task(deadline.receive(asyncio.Queue().get))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        deadline.cancel()

    asyncio.run(scenario())


@pytest.fixture
def cap_of_two(settings):
    settings.REALTIME_WS_MAX_PER_CLIENT = 2
    yield
    assert not limits.open_per_client, "a connection was not uncounted"


def test_connections_beyond_the_cap_per_address_are_closed_with_1013(cap_of_two):
    async def open_from(address: str) -> tuple[Communicator, dict | None]:
        app = from_address(limits.ConnectionCapMiddleware(echo_app([])), address)
        communicator = Communicator(app, "/ws/")
        connected, _ = await communicator.connect()
        assert connected
        closed = (
            None
            if await communicator.receive_nothing(0.05)
            else await communicator.receive_output()
        )
        return communicator, closed

    async def scenario():
        first, second = await open_from("192.0.2.1"), await open_from("192.0.2.1")
        third = await open_from("192.0.2.1")
        other = await open_from("192.0.2.2")
        await first[0].disconnect()
        await asyncio.sleep(0.05)
        again = await open_from("192.0.2.1")
        for communicator, closed in (second, other, again):
            assert closed is None
            await communicator.disconnect()
        await third[0].wait()
        return third[1]

    refused = asyncio.run(scenario())
    assert refused == {
        "type": "websocket.close",
        "code": 1013,
        "reason": "Too many connections from your address",
    }


def test_the_client_address_is_the_scopes_client_never_a_header(settings):
    """The server decided the scope's client from what it trusts (test_client_address.py);
    the limits read only that, whatever headers arrive."""
    scope = {
        "client": ("10.0.0.5", 4000),
        "headers": [(b"x-forwarded-for", b"203.0.113.9, 198.51.100.7")],
    }
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert limits.client_address(scope) == "10.0.0.5"
    assert limits.client_address({"client": ("2001:db8::1", 5), "headers": []}) == "2001:db8::/64"
    assert limits.client_address({"client": None, "headers": []}) is None


def test_an_unknown_address_is_not_capped(settings):
    settings.REALTIME_WS_MAX_PER_CLIENT = 1

    async def scenario():
        sockets = []
        for _ in range(3):
            communicator = Communicator(limits.ConnectionCapMiddleware(echo_app([])), "/ws/")
            assert (await communicator.connect())[0]
            assert await communicator.receive_nothing(0.05)
            sockets.append(communicator)
        for communicator in sockets:
            await communicator.disconnect()

    asyncio.run(scenario())


def test_only_close_codes_a_server_may_send_are_put_on_the_wire():
    assert all(sendable(code) for code in (1000, 1001, 1007, 1008, 1009, 1011, 1013, 4000, 4999))
    assert not any(sendable(code) for code in (999, 1004, 1005, 1006, 1015, 2000, 5000, True))
