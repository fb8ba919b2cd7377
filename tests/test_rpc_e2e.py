"""Calls with a reply on `serve --workers 2` with a private Redis, real logins and real WSS
clients, the procedures of tests/rpc_app/rpc.py discovered as any app's are: every kind of
reply, a deadline run past (REALTIME_RPC_TIMEOUT=1), a permission revoked after connect,
1,000 calls at once on one socket, while the worker goes on answering everyone else, and one
user's hung handlers on two sockets, while another user's sync calls are still answered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections import Counter

import pytest

from tests.helpers import (
    PYTHON,
    create_users,
    free_port,
    healthz,
    logged_in,
    open_spread,
    receive_json,
    run_in_shell,
    wait_until,
    ws_connect,
)

STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")
IN_FLIGHT = 8  # REALTIME_RPC_MAX_IN_FLIGHT's default
THREADS = 4  # REALTIME_RPC_THREADS's default
SHARE = THREADS // 2  # sync calls one user (or address) may have running or queued


@pytest.fixture(scope="module")
def users(server_env):
    return create_users(server_env, {"alice": False, "bob": False})


@pytest.fixture(scope="module")
def served(start, redis_server, users):
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(
        serve,
        port,
        DJANGO_SETTINGS_MODULE="tests.rpc_settings",  # the project plus tests/rpc_app
        REDIS_URL=redis_server.url,
        REALTIME_RPC_TIMEOUT="1",
        REALTIME_WS_RATE="0",  # 1,000 calls at once: the message budget is tested elsewhere
    )
    wait_until(lambda: len(STARTED.findall(server.log())) >= 2, "both workers started")
    return server


def url_of(served) -> str:
    return f"wss://localhost:{served.port}/ws/"


def cookie(served, client_tls, users, name: str) -> dict:
    return {"Cookie": logged_in(served.port, client_tls, name, users).cookie_header()}


async def call(socket_, name: str, data=None, ref=1) -> dict:
    await socket_.send(json.dumps({"type": "call", "name": name, "data": data, "ref": ref}))
    return await receive_json(socket_)


async def replies(socket_, count: int) -> dict:
    """`count` replies, by ref."""
    got = [await receive_json(socket_) for _ in range(count)]
    return {reply["ref"]: reply for reply in got}


def code(reply: dict) -> str:
    return reply["error"]["code"] if "error" in reply else "data"


def test_every_kind_of_reply(served, client_tls, users):
    alice = cookie(served, client_tls, users, "alice")

    async def scenario():
        async with (
            ws_connect(url_of(served), client_tls, additional_headers=alice) as a,
            ws_connect(url_of(served), client_tls) as anonymous,
        ):
            await receive_json(a), await receive_json(anonymous)
            got = {
                "echo": await call(a, "test.echo", {"n": 1, "text": "é"}),
                "echo_async": await call(a, "test.echo_async", [1, None]),
                "public": await call(anonymous, "test.public"),
                "not_allowed": await call(anonymous, "test.echo", ref="r"),
                "unknown": await call(anonymous, "test.nothing", ref="r"),
                "rejected": await call(a, "test.reject"),
                "raised": await call(a, "test.raise"),
                "too_big": await call(a, "test.too_big"),
                "not_json": await call(a, "test.not_json"),
            }
            began = time.monotonic()
            sync_hang = {"type": "call", "name": "test.hang", "data": {"gate": "t"}, "ref": "s"}
            await a.send(json.dumps(sync_hang))
            await a.send(json.dumps({"type": "call", "name": "test.hang_async", "ref": "a"}))
            hung = await replies(a, 2)
            waited = time.monotonic() - began
            released = await call(a, "test.release", {"gate": "t"})
            await a.send(json.dumps({"type": "call", "name": "test.echo"}))
            no_ref = await receive_json(a)
            no_name = await call(a, None, ref="n")
            return got, hung, waited, released, no_ref, no_name

    got, hung, waited, released, no_ref, no_name = asyncio.run(scenario())
    assert got["echo"] == {
        "type": "reply", "ref": 1, "data": {"data": {"n": 1, "text": "é"}, "user": "alice"}
    }  # fmt: skip
    assert got["echo_async"]["data"] == {"data": [1, None], "user": "alice"}
    assert got["public"]["data"] == {"signed_in": False}
    # A name that exists but may not be called is answered as one that does not exist.
    assert got["not_allowed"] == got["unknown"]
    assert got["unknown"]["error"]["code"] == "not_found"
    assert got["rejected"]["error"] == {"code": "rejected", "detail": "Out of stock"}
    for name in ("raised", "too_big", "not_json"):
        assert code(got[name]) == "internal", name
    assert got["raised"]["error"]["detail"] == got["too_big"]["error"]["detail"]
    assert "4242" not in json.dumps(got)
    log = served.log()
    assert "rpc-secret-4242" in log and "Traceback" in log  # on the server, with its traceback
    assert "more than REALTIME_TOPIC_MAX_DATA" in log
    assert {ref: code(reply) for ref, reply in hung.items()} == {"s": "timeout", "a": "timeout"}
    assert 1 <= waited < 3
    assert released["data"]["async_cancelled"] >= 1  # the async one was cancelled at its deadline
    assert (no_ref["ref"], code(no_ref)) == (None, "invalid_call")
    assert (no_name["ref"], code(no_name)) == ("n", "invalid_call")


def test_a_permission_revoked_after_connect_is_not_found_at_the_next_call(
    served, client_tls, users, server_env, redis_server
):
    def permission(action: str) -> None:
        run_in_shell(
            {**server_env, "REDIS_URL": redis_server.url},
            "from django.contrib.auth import get_user_model\n"
            "from django.contrib.auth.models import Permission\n"
            "bob = get_user_model().objects.get(username='bob')\n"
            "perm = Permission.objects.get(codename='view_user')\n"
            f"bob.user_permissions.{action}(perm)\n",
        )

    permission("add")
    bob = cookie(served, client_tls, users, "bob")

    async def scenario():
        async with ws_connect(url_of(served), client_tls, additional_headers=bob) as b:
            await receive_json(b)
            before = await call(b, "test.perm")
            await asyncio.to_thread(permission, "remove")
            after = await call(b, "test.perm")
            pong = await call(b, "test.public")  # the socket is still open
            return before, after, pong

    before, after, still = asyncio.run(scenario())
    assert before["data"] == "allowed"
    assert after["error"]["code"] == "not_found"
    assert still["data"] == {"signed_in": True}


async def two_on_one_worker(url: str, tls, stack, headers: dict | None = None):
    """Two sockets (anonymous, or with `headers`) on the same worker, and that worker's slot."""
    sockets: dict[str, list] = {}
    for _ in range(20):
        for socket_, worker in await open_spread(url, tls, 1, stack, additional_headers=headers):
            sockets.setdefault(worker, []).append(socket_)
            if len(sockets[worker]) == 2:
                return *sockets[worker], worker
    raise AssertionError("no two sockets on one worker")


async def one_on(worker: str, url: str, tls, stack, headers: dict | None = None):
    """A socket (anonymous, or with `headers`) on `worker`."""
    for _ in range(20):
        for socket_, slot_ in await open_spread(url, tls, 1, stack, additional_headers=headers):
            if slot_ == worker:
                return socket_
    raise AssertionError(f"no socket on {worker}")


def test_a_thousand_calls_at_once_and_handlers_that_never_return(served, client_tls):
    """One anonymous socket sends 1,000 calls to a sync handler that never returns: 2 run (its
    address's share of the worker's 4 handler threads), the rest are refused at once;
    meanwhile and after, the worker answers pings, /healthz, a subscribe (the database thread)
    and async calls of another socket. A sync call of another socket of the same address is
    refused until the handlers return (its share is held), and the first socket stays capped
    meanwhile."""
    url = url_of(served)
    hang = {"type": "call", "name": "test.hang", "data": {"gate": "g1000"}}

    async def pings(socket_, done: asyncio.Event) -> list[float]:
        times = []
        while not done.is_set():
            began = time.monotonic()
            await socket_.send('{"type": "ping"}')
            assert (await receive_json(socket_))["type"] == "pong"
            times.append(time.monotonic() - began)
            await asyncio.sleep(0.02)
        return times

    async def burst(socket_) -> tuple[Counter, float, float]:
        began = time.monotonic()
        for ref in range(1000):
            await socket_.send(json.dumps({**hang, "ref": ref}))
        got, refused_by = Counter(), 0.0
        for _ in range(1000):
            got[code(await receive_json(socket_))] += 1
            if got["too_many_calls"] == 1000 - SHARE and not refused_by:
                refused_by = time.monotonic() - began
        return got, refused_by, time.monotonic() - began

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            a, b, worker = await two_on_one_worker(url, client_tls, stack)
            done = asyncio.Event()
            pinging = asyncio.ensure_future(pings(b, done))
            health = asyncio.gather(
                *(asyncio.to_thread(healthz, served.port, client_tls) for _ in range(6))
            )
            got, refused_by, answered_by = await burst(a)
            done.set()
            rtts, statuses = await pinging, await health
            # The address's share of the handler threads is held now; the database thread is not.
            began = time.monotonic()
            await b.send(json.dumps({"type": "subscribe", "topic": "news.rpc"}))
            subscribed = await receive_json(b)
            subscribe_took = time.monotonic() - began
            others_sync = await call(b, "test.public", ref="sync")
            others_async = await call(b, "test.release", {"gate": "unused"}, ref="async")
            for ref in range(1000, 1000 + IN_FLIGHT):
                await a.send(json.dumps({**hang, "ref": ref}))
            capped = Counter(code(r) for r in (await replies(a, IN_FLIGHT)).values())
            await call(b, "test.release", {"gate": "g1000"})
            free = None
            for _ in range(50):
                free = await call(a, "test.public", ref="free")
                if code(free) == "data":
                    break
            return (worker, got, refused_by, answered_by, rtts, statuses, subscribed,
                    subscribe_took, others_sync, others_async, capped, free)  # fmt: skip

    (worker, got, refused_by, answered_by, rtts, statuses, subscribed, subscribe_took,
     others_sync, others_async, capped, free) = asyncio.run(scenario())  # fmt: skip
    print(
        f"\n1,000 calls on one socket ({worker}): {got['too_many_calls']} refused within "
        f"{refused_by * 1000:.0f} ms, all answered in {answered_by * 1000:.0f} ms; another "
        f"socket's pings meanwhile: {len(rtts)}, max {max(rtts) * 1000:.1f} ms; subscribe "
        f"with the address's handlers hung: {subscribe_took * 1000:.1f} ms"
    )
    assert got == Counter({"too_many_calls": 1000 - SHARE, "timeout": SHARE})
    assert rtts and max(rtts) < 1.0
    assert [status for status, _ in statuses] == [200] * 6
    assert (subscribed["type"], subscribed["topic"]) == ("subscribed", "news.rpc")
    assert subscribe_took < 1.0
    # The same address on another socket: its share is held by the first one's handlers.
    assert code(others_sync) == "too_many_calls"
    assert code(others_async) == "data"
    # The 2 handlers still running count against their socket and their address until they
    # return: 2 refused by the socket's cap, 6 by the address's share.
    assert capped == Counter({"too_many_calls": IN_FLIGHT})
    assert free["data"] == {"signed_in": False}  # released: the threads serve again


def test_one_user_hanging_handlers_on_two_sockets_leaves_the_others_their_threads(
    served, client_tls, users
):
    """alice sends 8 calls that never return, 4 on each of two sockets of one worker: 2 run
    (her share), 6 are refused; bob's sync call with the database on that worker is answered
    meanwhile, and a new socket of alice's gets no fresh share until her handlers return."""
    url = url_of(served)
    alice = cookie(served, client_tls, users, "alice")
    bob = cookie(served, client_tls, users, "bob")
    hang = {"type": "call", "name": "test.hang", "data": {"gate": "g-alice"}}

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            a1, a2, worker = await two_on_one_worker(url, client_tls, stack, alice)
            b = await one_on(worker, url, client_tls, stack, bob)
            for ref in range(8):
                await (a1 if ref < 4 else a2).send(json.dumps({**hang, "ref": ref}))
            hung = [*(await replies(a1, 4)).values(), *(await replies(a2, 4)).values()]
            began = time.monotonic()
            bobs = await call(b, "test.echo", "hello", ref="bob")
            bob_took = time.monotonic() - began
            a3 = await one_on(worker, url, client_tls, stack, alice)
            again = await call(a3, "test.echo", ref="again")
            await call(b, "test.release", {"gate": "g-alice"})
            free = None
            for _ in range(50):
                free = await call(a3, "test.echo", ref="free")
                if code(free) == "data":
                    break
            return hung, bobs, bob_took, again, free

    hung, bobs, bob_took, again, free = asyncio.run(scenario())
    print(f"\nbob's sync call with alice's handlers hung: {bob_took * 1000:.1f} ms")
    assert Counter(code(reply) for reply in hung) == {"too_many_calls": 8 - SHARE, "timeout": SHARE}
    assert bobs["data"] == {"data": "hello", "user": "bob"}
    assert bob_took < 1.0
    assert code(again) == "too_many_calls"
    assert free["data"]["user"] == "alice"


def test_a_worker_whose_handlers_hang_still_stops_at_once_on_sigterm(start, client_tls):
    """One handler thread (so one anonymous socket's share holds all of them), hung."""
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "1", "--port", str(port)]
    server = start(
        serve,
        port,
        DJANGO_SETTINGS_MODULE="tests.rpc_settings",
        REALTIME_RPC_TIMEOUT="1",
        REALTIME_RPC_THREADS="1",
    )
    hang = {"type": "call", "name": "test.hang", "data": {"gate": "never"}}

    async def scenario() -> float:
        async with ws_connect(f"wss://localhost:{port}/ws/", client_tls) as socket_:
            await receive_json(socket_)
            await socket_.send(json.dumps({**hang, "ref": 1}))
            assert code(await receive_json(socket_)) == "timeout"
            began = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.process.wait, 15)
            return time.monotonic() - began

    took = asyncio.run(scenario())
    print(f"\nserve stopped {took * 1000:.0f} ms after SIGTERM with its handler thread hung")
    assert server.process.returncode == 0
    assert "did not stop in time" not in server.log()
    assert took < 5, f"serve took {took:.1f} s to stop"
