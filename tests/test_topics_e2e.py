"""Topics on `serve --workers 2` with a private Redis, real logins and real WSS clients: a
message to one user on both workers, a forbidden subscribe, presence through a worker killed
with SIGKILL, and subscriptions ended on every worker when a user's access changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal

import pytest
from websockets.exceptions import ConnectionClosed

from tests.helpers import (
    PYTHON,
    create_users,
    demote,
    drain,
    free_port,
    logged_in,
    open_on_both_workers,
    open_spread,
    receive_json,
    run_in_shell,
    server_query,
    wait_until,
    ws_connect,
)

STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")
PRESENCE_TTL = 3  # seconds: a killed worker's users leave within this and a refresh


@pytest.fixture(scope="module")
def users(server_env):
    return create_users(server_env, {"alice": True, "bob": False, "carol": False})


@pytest.fixture(scope="module")
def served(start, redis_server, users):
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(serve, port, REDIS_URL=redis_server.url, REALTIME_PRESENCE_TTL=str(PRESENCE_TTL))
    wait_until(lambda: len(STARTED.findall(server.log())) >= 2, "both workers started")
    return server


def url_of(served) -> str:
    return f"wss://localhost:{served.port}/ws/"


def shell(env: dict, redis_server, code: str) -> None:
    run_in_shell({**env, "REDIS_URL": redis_server.url}, code)


def cookie(served, client_tls, users, name: str) -> str:
    return logged_in(served.port, client_tls, name, users).cookie_header()


async def ask(socket_, message: dict) -> dict:
    await socket_.send(json.dumps(message))
    return await receive_json(socket_)


async def subscribe(socket_, topic: str) -> dict:
    return await ask(socket_, {"type": "subscribe", "topic": topic})


def test_a_message_to_one_user_reaches_each_of_its_tabs_on_both_workers_only(
    served, client_tls, users, server_env, redis_server
):
    alice = cookie(served, client_tls, users, "alice")
    bob = cookie(served, client_tls, users, "bob")

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            tabs = await open_on_both_workers(url_of(served), client_tls, stack, alice)
            others = await open_spread(url_of(served), client_tls, 4, stack)
            others += await open_spread(
                url_of(served), client_tls, 4, stack, additional_headers={"Cookie": bob}
            )
            code = (
                "from django.contrib.auth import get_user_model\n"
                "from realtime import topics\n"
                "alice = get_user_model().objects.get(username='alice')\n"
                "topics.send_to_user(alice, {'text': 'Your export is ready'}, event='export')\n"
            )
            await asyncio.to_thread(shell, server_env, redis_server, code)
            got = [await receive_json(socket_) for socket_, _ in tabs]
            more = [await drain(socket_, 1.0) for socket_, _ in tabs + others]
            return {worker for _, worker in tabs}, got, more

    workers, got, more = asyncio.run(scenario())
    assert workers == {"w1", "w2"}
    assert {(m["type"], m["topic"], m["event"]) for m in got} == {("message", "user", "export")}
    assert {m["data"]["text"] for m in got} == {"Your export is ready"}
    assert len({m["offset"] for m in got}) == 1
    assert more == [[]] * len(more)  # no copy to a tab, nothing to anyone else


def test_a_forbidden_subscribe_is_refused_and_gets_no_data(
    served, client_tls, users, server_env, redis_server
):
    alice = cookie(served, client_tls, users, "alice")
    bob = cookie(served, client_tls, users, "bob")

    async def scenario():
        async with (
            ws_connect(url_of(served), client_tls, additional_headers={"Cookie": bob}) as b,
            ws_connect(url_of(served), client_tls, additional_headers={"Cookie": alice}) as a,
        ):
            await receive_json(a), await receive_json(b)
            refused = await subscribe(b, "orders.9")
            unknown = await subscribe(b, "nothing.here")
            allowed = await subscribe(a, "orders.9")
            code = "from realtime import topics\ntopics.send('orders.9', {'status': 'paid'})\n"
            await asyncio.to_thread(shell, server_env, redis_server, code)
            return refused, unknown, allowed, await receive_json(a), await drain(b, 1.0)

    refused, unknown, allowed, message, nothing = asyncio.run(scenario())
    assert (refused["type"], refused["code"], refused["topic"]) == (
        "error",
        "forbidden",
        "orders.9",
    )
    assert {k: v for k, v in unknown.items() if k != "topic"} == {
        k: v for k, v in refused.items() if k != "topic"
    }  # an unknown topic looks exactly like a forbidden one
    assert allowed["type"] == "subscribed"
    assert (message["data"], message["offset"]) == ({"status": "paid"}, allowed["offset"] + 1)
    assert nothing == []


async def socket_on(served, client_tls, worker: str, stack, cookie_: str):
    """A signed-in socket on the given worker (the kernel spreads connections)."""
    for _ in range(40):
        socket_, slot_ = (
            await open_spread(
                url_of(served), client_tls, 1, stack, additional_headers={"Cookie": cookie_}
            )
        )[0]
        if slot_ == worker:
            return socket_
        await socket_.close()
    raise AssertionError(f"no socket landed on {worker}")


def listed(env: dict, redis_server, topic: str) -> list[str]:
    code = (
        "import json\nfrom realtime import topics\n"
        f"print(json.dumps(sorted(u['username'] for u in topics.presence({topic!r}))))\n"
    )
    out = run_in_shell({**env, "REDIS_URL": redis_server.url}, code)
    return json.loads(out.strip().splitlines()[-1])


def test_presence_lists_each_user_once_and_a_killed_workers_users_leave(
    served, client_tls, users, server_env, redis_server
):
    topic = "documents.plan"
    alice, bob, carol = (cookie(served, client_tls, users, n) for n in ("alice", "bob", "carol"))
    pids = dict(STARTED.findall(served.log()))

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            watcher = await socket_on(served, client_tls, "w1", stack, bob)
            await subscribe(watcher, topic)
            before = await receive_json(watcher)
            tabs = [await socket_on(served, client_tls, w, stack, alice) for w in ("w1", "w2")]
            carol_tab = await socket_on(served, client_tls, "w2", stack, carol)
            for tab in [*tabs, carol_tab]:
                await subscribe(tab, topic)
                await receive_json(tab)  # presence
            joins = [await receive_json(watcher) for _ in range(2)]
            once = await drain(watcher, 1.0)  # alice's second tab is no second join
            everyone = await asyncio.to_thread(listed, server_env, redis_server, topic)
            os.kill(int(pids["w2"]), signal.SIGKILL)  # alice's second tab and carol's only
            left = await asyncio.wait_for(receive_json(watcher), PRESENCE_TTL * 3)
            alice_stays = await drain(watcher, PRESENCE_TTL * 1.5)
            after_kill = await asyncio.to_thread(listed, server_env, redis_server, topic)
            await tabs[0].close()
            alice_left = await receive_json(watcher)
            return before, joins, once, everyone, left, alice_stays, after_kill, alice_left

    before, joins, once, everyone, left, alice_stays, after_kill, alice_left = asyncio.run(
        scenario()
    )
    assert [u["username"] for u in before["users"]] == ["bob"]
    assert sorted((m["type"], m["user"]["username"]) for m in joins) == [
        ("join", "alice"),
        ("join", "carol"),
    ]
    assert once == []
    assert everyone == ["alice", "bob", "carol"]
    assert (left["type"], left["user"]["username"]) == ("leave", "carol")
    assert alice_stays == []  # her tab on w1 is still open
    assert after_kill == ["alice", "bob"]
    assert (alice_left["type"], alice_left["user"]["username"]) == ("leave", "alice")


async def until_closed(socket_) -> tuple[list[dict], int | None]:
    """Every message until the server closes the socket, and its close code."""
    frames = []
    with contextlib.suppress(ConnectionClosed):
        async for text in socket_:
            frames.append(json.loads(text))
    return frames, socket_.close_code


def test_an_access_change_ends_the_subscriptions_it_forbids_on_every_worker(
    start, redis_server, client_tls, server_env
):
    users = create_users(server_env, {"dave": True})
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(serve, port, REDIS_URL=redis_server.url)
    url = f"wss://localhost:{port}/ws/"
    dave = logged_in(port, client_tls, "dave", users).cookie_header()

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            tabs = await open_on_both_workers(url, client_tls, stack, dave)
            for socket_, _ in tabs:
                assert (await subscribe(socket_, "orders.3"))["type"] == "subscribed"
                assert (await subscribe(socket_, "documents.d"))["type"] == "subscribed"
                await receive_json(socket_)  # presence
            await asyncio.to_thread(demote, server_env, redis_server.url, "dave")
            return [(worker, *await until_closed(socket_)) for socket_, worker in tabs]

    ends = asyncio.run(scenario())
    assert {worker for worker, _, _ in ends} == {"w1", "w2"}
    for _, frames, code in ends:
        unsubscribed = [f for f in frames if f["type"] == "unsubscribed"]
        assert unsubscribed == [
            {"type": "unsubscribed", "topic": "orders.3", "reason": "forbidden"}
        ]
        assert code == 4001
    assert "Traceback" not in server.log()
    assert server_query(server_env, "SELECT 1") == [(1,)]
