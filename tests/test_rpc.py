"""Calls with a reply in process (realtime.rpc, realtime/websocket/calls.py): the registry,
the wire's call and reply, and calls through the whole ASGI application: rights read at each
call, handler threads apart from the database thread, the cap that lasts until a handler
really ends, each user's (or address's) share of the threads over all its sockets, refusals
that never wait for a thread, a queued call abandoned at its deadline, cancellation at close,
unfit results."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db import connections

from realtime import rpc, wire
from realtime.websocket import calls
from tests.test_authorization import opened, signed_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _procedures():
    saved = dict(rpc.procedures)
    yield
    rpc.procedures.clear()
    rpc.procedures.update(saved)


@pytest.fixture(autouse=True)
def _handler_threads(monkeypatch):
    """Handler threads of the test's own; after it, each closes the database connection it
    opened (as conftest does for asgiref's thread: PostgreSQL drops the test database only
    when no session is left on it), then ends. Every share of the threads the test took was
    given back by then."""
    monkeypatch.setattr(calls, "_threads", calls.HandlerThreads(4))
    monkeypatch.setattr(calls, "shares", calls.Shares())
    yield
    threads = calls._threads  # the test's, when it put in its own
    barrier = threading.Barrier(threads.size)  # one close for each thread, not two for one

    def close() -> None:
        barrier.wait(10)
        connections.close_all()

    for closing in [threads.submit(close) for _ in range(threads.size)]:
        closing.result(15)
    threads.shutdown()
    assert len(calls.shares) == 0, "a share outlived its handler"


async def call(socket_, name: str, data=None, ref=1) -> dict:
    await socket_.send_json_to({"type": "call", "name": name, "data": data, "ref": ref})
    return await socket_.receive_json_from()


# --- The registry --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "a/b", "a b", "x" * 101, "é", None, 3])
def test_a_name_a_client_could_not_send_is_refused(name):
    with pytest.raises(ValueError, match="procedure name"):
        rpc.register(name)


def test_authorize_and_the_handler_must_be_functions():
    with pytest.raises(TypeError):
        rpc.register("a.b", authorize="staff")

    async def async_check(user):
        return True

    with pytest.raises(TypeError):
        rpc.register("a.b", authorize=async_check)
    with pytest.raises(TypeError):
        rpc.register("a.b")(42)


def test_registering_a_name_again_replaces_it_and_sync_or_async_is_known():
    @rpc.register("cart.add")
    def first(user, data):
        return 1

    @rpc.register("cart.add", authorize=rpc.anyone)
    async def second(user, data):
        return 2

    procedure = rpc.lookup("cart.add")
    assert (procedure.function, procedure.authorize, procedure.is_async) == (
        second,
        rpc.anyone,
        True,
    )
    assert rpc.register("cart.sub")(first) is first  # the decorator returns the function
    assert (rpc.lookup("cart.sub").authorize, rpc.lookup("cart.sub").is_async) == (
        rpc.signed_in,
        False,
    )
    assert rpc.lookup("cart.none") is None


def test_a_rejected_reason_is_kept_short():
    assert rpc.Rejected("x" * 5000).reason == "x" * rpc.MAX_REASON


# --- The wire ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "ref"),
    [
        ({"name": "a"}, None),
        ({"name": "a", "ref": True}, None),
        ({"name": "a", "ref": 1.5}, None),
        ({"name": "a", "ref": ""}, None),
        ({"name": "a", "ref": "r" * 65}, None),
        ({"name": "a", "ref": 2**60}, None),
        ({"ref": "r1"}, "r1"),
        ({"name": 7, "ref": 7}, 7),
        ({"name": "x" * 101, "ref": 7}, 7),
    ],
)
def test_a_malformed_call_is_refused_with_its_ref_when_it_has_one(message, ref):
    with pytest.raises(wire.ProtocolError) as refused:
        wire.call_request({"type": "call", **message})
    assert refused.value.code == "invalid_call"
    assert wire.call_ref(message) == ref


def test_a_call_and_its_reply():
    assert wire.call_request({"type": "call", "name": "a.b", "ref": "r-1"}) == ("a.b", None, "r-1")
    assert wire.reply(7, '{"n":1}') == '{"type":"reply","ref":7,"data":{"n":1}}'
    assert wire.type_of(wire.reply_error(None, "invalid_call", "...")) == "reply"


# --- Calls through the application ---------------------------------------------------------


def test_a_sync_handler_runs_in_a_handler_thread_with_the_user_as_stored_now():
    alice = signed_in("alice")
    seen = {}

    @rpc.register("who")
    def who(user, data):
        seen["thread"] = threading.current_thread().name
        return {"user": user.get_username(), "users": get_user_model().objects.count()}

    async def scenario():
        socket_ = await opened(alice)
        replies = [await call(socket_, "who", ref="a"), await call(socket_, "nothing", ref="b")]
        await sync_to_db(lambda: get_user_model().objects.update(is_active=False))
        replies.append(await call(socket_, "who", ref="c"))
        await socket_.disconnect()
        return replies

    ok, unknown, deactivated = asyncio.run(scenario())
    assert ok == {"type": "reply", "ref": "a", "data": {"user": "alice", "users": 1}}
    assert seen["thread"].startswith("realtime-rpc-")  # not the shared database thread
    assert unknown["error"]["code"] == "not_found"
    # No signal ran (update()): the rights are read at the call, not taken from the socket.
    assert deactivated == {**unknown, "ref": "c"}


async def sync_to_db(function):
    from channels.db import database_sync_to_async

    return await database_sync_to_async(function)()


def test_a_call_counts_until_its_handler_really_ends(settings):
    settings.REALTIME_RPC_TIMEOUT = 1
    settings.REALTIME_RPC_MAX_IN_FLIGHT = 2
    gate = threading.Event()
    rpc.register("hang", authorize=rpc.anyone)(lambda user, data: gate.wait() and "done")
    rpc.register("quick", authorize=rpc.anyone)(lambda user, data: "quick")

    async def scenario():
        socket_ = await opened()
        for ref in (1, 2):
            await socket_.send_json_to({"type": "call", "name": "hang", "ref": ref})
        timeouts = [await socket_.receive_json_from(5) for _ in range(2)]
        held = await call(socket_, "quick", ref=3)  # both threads still stuck
        gate.set()
        await asyncio.sleep(0.2)
        after = await call(socket_, "quick", ref=4)
        await socket_.disconnect()
        return timeouts, held, after

    timeouts, held, after = asyncio.run(scenario())
    assert [t["error"]["code"] for t in timeouts] == ["timeout", "timeout"]
    assert timeouts[0]["error"]["detail"] == "No reply within 1 s."
    assert held["error"]["code"] == "too_many_calls"
    assert after == {"type": "reply", "ref": 4, "data": "quick"}


def test_a_call_queued_behind_busy_threads_is_abandoned_at_its_deadline(settings, monkeypatch):
    settings.REALTIME_RPC_TIMEOUT = 1
    monkeypatch.setattr(calls, "_threads", calls.HandlerThreads(1))
    alice = signed_in("alice")
    gate, ran = threading.Event(), []
    rpc.register("hang", authorize=rpc.anyone)(lambda user, data: gate.wait())
    rpc.register("late", authorize=rpc.anyone)(lambda user, data: ran.append(1))

    async def scenario():
        anonymous, a = await opened(), await opened(alice)
        await anonymous.send_json_to({"type": "call", "name": "hang", "ref": 1})
        late = await call(a, "late", ref=2)  # queued: the one thread hangs
        first = await anonymous.receive_json_from(5)
        held = calls.shares.held(f"user:{await alice_pk()}")
        gate.set()
        await asyncio.sleep(0.3)
        await anonymous.disconnect(), await a.disconnect()
        return late, first, held

    late, first, held = asyncio.run(scenario())
    assert (late["error"]["code"], first["error"]["code"]) == ("timeout", "timeout")
    assert ran == []  # answered timeout, so never run afterwards
    assert held == 0  # and its share given back then, not when the thread came free


async def alice_pk():
    return await sync_to_db(lambda: get_user_model().objects.get(username="alice").pk)


def test_one_user_with_hung_handlers_on_two_sockets_cannot_starve_another(settings):
    """4 threads: alice's share is 2, over all her sockets, until her handlers really end;
    closing them and connecting again gives her none back. bob, and an anonymous socket, are
    answered meanwhile."""
    settings.REALTIME_RPC_TIMEOUT = 1
    bob, alice = signed_in("bob"), signed_in("alice")
    gate = threading.Event()
    rpc.register("hang")(lambda user, data: gate.wait() and "done")
    rpc.register("quick", authorize=rpc.anyone)(lambda user, data: user.get_username())

    async def scenario():
        a1, a2, b = await opened(alice), await opened(alice), await opened(bob)
        for ref in range(8):
            await (a1 if ref % 2 else a2).send_json_to({"type": "call", "name": "hang", "ref": ref})
        hung = [await a1.receive_json_from(5) for _ in range(4)]
        hung += [await a2.receive_json_from(5) for _ in range(4)]
        began = time.monotonic()
        bobs = await call(b, "quick", ref="bob")
        bob_took = time.monotonic() - began
        anonymous = await opened()
        anonymous_reply = await call(anonymous, "quick", ref="anon")
        await a1.disconnect(), await a2.disconnect()
        again = await opened(alice)
        reconnected = await call(again, "quick", ref="again")
        gate.set()
        for _ in range(50):
            if calls.shares.held(f"user:{await alice_pk()}") == 0:
                break
            await asyncio.sleep(0.05)
        released = await call(again, "quick", ref="released")
        for socket_ in (b, anonymous, again):
            await socket_.disconnect()
        return hung, bobs, bob_took, anonymous_reply, reconnected, released

    hung, bobs, bob_took, anonymous_reply, reconnected, released = asyncio.run(scenario())
    assert Counter(reply["error"]["code"] for reply in hung) == {
        "too_many_calls": 6,
        "timeout": 2,
    }
    refused = next(r for r in hung if r["error"]["code"] == "too_many_calls")
    assert "At most 2 calls of one user" in refused["error"]["detail"]
    assert bobs == {"type": "reply", "ref": "bob", "data": "bob"}
    assert bob_took < 0.5
    assert anonymous_reply["data"] == ""  # AnonymousUser's username
    assert reconnected["error"]["code"] == "too_many_calls"
    assert released == {"type": "reply", "ref": "released", "data": "alice"}


def test_a_refused_call_never_waits_behind_hung_handlers(settings, monkeypatch):
    """The one thread hangs: a call `authorize` refuses is answered not_found at once, not
    timeout after it queued for the thread."""
    settings.REALTIME_RPC_TIMEOUT = 5
    monkeypatch.setattr(calls, "_threads", calls.HandlerThreads(1))
    alice = signed_in("alice")
    gate = threading.Event()
    rpc.register("hang", authorize=rpc.anyone)(lambda user, data: gate.wait())
    rpc.register("staff.only", authorize=lambda user: user.is_staff)(lambda user, data: 1)

    async def scenario():
        anonymous, a = await opened(), await opened(alice)
        await anonymous.send_json_to({"type": "call", "name": "hang", "ref": 1})
        await asyncio.sleep(0.1)
        began = time.monotonic()
        refused = await call(a, "staff.only", ref=2)
        took = time.monotonic() - began
        gate.set()
        hung = await anonymous.receive_json_from(5)
        await anonymous.disconnect(), await a.disconnect()
        return refused, took, hung

    refused, took, hung = asyncio.run(scenario())
    assert refused["error"]["code"] == "not_found"
    assert took < 1
    assert hung["data"] is True


def test_closing_the_socket_cancels_its_async_calls(settings):
    settings.REALTIME_RPC_TIMEOUT = 60
    started, cancelled = asyncio.Event(), []

    @rpc.register("wait", authorize=rpc.anyone)
    async def wait(user, data):
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(data)
            raise

    async def scenario():
        socket_ = await opened()
        await socket_.send_json_to({"type": "call", "name": "wait", "data": "w1", "ref": 1})
        await asyncio.wait_for(started.wait(), 5)
        await socket_.disconnect()
        for _ in range(50):
            if cancelled:
                break
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert cancelled == ["w1"]


def test_rejected_unfit_and_failing_handlers(settings, caplog):
    settings.REALTIME_TOPIC_MAX_DATA = 100
    alice = signed_in("alice")
    rpc.register("no")(lambda user, data: (_ for _ in ()).throw(rpc.Rejected("Out of stock")))
    rpc.register("big")(lambda user, data: "x" * 200)
    rpc.register("object")(lambda user, data: object())
    rpc.register("nan")(lambda user, data: float("nan"))

    @rpc.register("bug")
    async def bug(user, data):
        raise KeyError("secret-in-traceback")

    async def scenario():
        socket_ = await opened(alice)
        replies = [await call(socket_, name) for name in ("no", "big", "object", "nan", "bug")]
        await socket_.send_json_to({"type": "call", "name": "no", "ref": False})
        replies.append(await socket_.receive_json_from())
        await socket_.disconnect()
        return replies

    with caplog.at_level(logging.ERROR, logger="realtime.websocket.calls"):
        rejected, big, unfit, nan, bug_, invalid = asyncio.run(scenario())
    assert rejected["error"] == {"code": "rejected", "detail": "Out of stock"}
    for reply in (big, unfit, nan, bug_):
        assert reply["error"] == {"code": "internal", "detail": calls.INTERNAL}
    assert "secret" not in str(bug_)
    assert "secret-in-traceback" in caplog.text  # with its traceback
    assert any("more than REALTIME_TOPIC_MAX_DATA" in r.getMessage() for r in caplog.records)
    assert (invalid["ref"], invalid["error"]["code"]) == (None, "invalid_call")
