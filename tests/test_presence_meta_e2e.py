"""Presence metadata on `serve --workers 2` with a private Redis, real logins and WSS clients:
an update on one worker heard on the other, listed to a later subscriber and by
topics.presence(), a too-large meta refused, updates coalesced past the interval, and a meta
that outlives the periodic refresh (a small REALTIME_PRESENCE_TTL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import pytest

from tests.helpers import (
    PYTHON,
    create_users,
    drain,
    free_port,
    logged_in,
    open_spread,
    receive_json,
    run_in_shell,
    wait_until,
)

STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")
PRESENCE_TTL = 3  # seconds: the workers refresh every second
INTERVAL = 1  # REALTIME_PRESENCE_UPDATE_INTERVAL


@pytest.fixture(scope="module")
def users(server_env):
    return create_users(server_env, {"alice": False, "bob": False, "carol": False})


@pytest.fixture(scope="module")
def served(start, redis_server, users):
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(
        serve,
        port,
        REDIS_URL=redis_server.url,
        REALTIME_PRESENCE_TTL=str(PRESENCE_TTL),
        REALTIME_PRESENCE_UPDATE_INTERVAL=str(INTERVAL),
    )
    wait_until(lambda: len(STARTED.findall(server.log())) >= 2, "both workers started")
    return server


@pytest.fixture(scope="module")
def cookies(served, client_tls, users):
    return {name: logged_in(served.port, client_tls, name, users).cookie_header() for name in users}


async def socket_on(served, client_tls, worker: str, stack, cookie: str):
    """A signed-in socket on the given worker (the kernel spreads connections)."""
    url = f"wss://localhost:{served.port}/ws/"
    for _ in range(40):
        socket_, slot_ = (
            await open_spread(url, client_tls, 1, stack, additional_headers={"Cookie": cookie})
        )[0]
        if slot_ == worker:
            return socket_
        await socket_.close()
    raise AssertionError(f"no socket landed on {worker}")


async def enter(socket_, topic: str) -> list[dict]:
    """Subscribe to a presence topic; returns who is there."""
    await socket_.send(json.dumps({"type": "subscribe", "topic": topic}))
    assert (await receive_json(socket_))["type"] == "subscribed"
    listed = await receive_json(socket_)
    assert listed["type"] == "presence"
    return listed["users"]


async def set_meta(socket_, topic: str, meta) -> None:
    await socket_.send(json.dumps({"type": "presence_update", "topic": topic, "meta": meta}))


def metas(users: list[dict]) -> dict[str, dict]:
    return {u["username"]: u["meta"] for u in users}


def presence_in_shell(env: dict, redis_server, topic: str) -> dict[str, dict]:
    code = (
        f"import json\nfrom realtime import topics\nprint(json.dumps(topics.presence({topic!r})))\n"
    )
    out = run_in_shell({**env, "REDIS_URL": redis_server.url}, code)
    return metas(json.loads(out.strip().splitlines()[-1]))


def test_a_meta_set_on_one_worker_is_heard_on_the_other_and_listed_to_newcomers(
    served, client_tls, cookies, server_env, redis_server
):
    topic = "documents.meta"

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            alice = await socket_on(served, client_tls, "w1", stack, cookies["alice"])
            bob = await socket_on(served, client_tls, "w2", stack, cookies["bob"])
            await enter(bob, topic)
            await enter(alice, topic)
            join = await receive_json(bob)
            await set_meta(alice, topic, {"status": "editing", "line": 12})
            heard, own = await receive_json(bob), await receive_json(alice)
            await set_meta(alice, topic, {"blob": "x" * 2000})
            refused = await receive_json(alice)
            quiet = await drain(bob, 1.0)
            carol = await socket_on(served, client_tls, "w2", stack, cookies["carol"])
            listed = await enter(carol, topic)
            shell = await asyncio.to_thread(presence_in_shell, server_env, redis_server, topic)
            return join, heard, own, refused, quiet, listed, shell

    join, heard, own, refused, quiet, listed, shell = asyncio.run(scenario())
    assert (join["type"], join["user"]["username"], join["user"]["meta"]) == ("join", "alice", {})
    meta = {"status": "editing", "line": 12}
    assert heard["type"] == "update" and heard["topic"] == "documents.meta"
    assert (heard["user"]["username"], heard["user"]["meta"]) == ("alice", meta)
    assert set(heard["user"]) == {"id", "username", "meta"}
    assert own == heard  # applied: the updating socket hears it too
    assert (refused["type"], refused["code"], refused["topic"]) == (
        "error",
        "too_large",
        "documents.meta",
    )
    assert quiet == []  # nothing of the refused one reached anybody
    assert metas(listed) == {"alice": meta, "bob": {}, "carol": {}}
    assert shell == metas(listed)


def test_updates_are_coalesced_per_interval_and_the_meta_outlives_the_refresh(
    served, client_tls, cookies, server_env, redis_server
):
    topic = "documents.coalesced"

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            alice = await socket_on(served, client_tls, "w1", stack, cookies["alice"])
            bob = await socket_on(served, client_tls, "w2", stack, cookies["bob"])
            await enter(bob, topic)
            await enter(alice, topic)
            await receive_json(bob)  # join
            await set_meta(alice, topic, {"n": 0})
            first = await receive_json(bob)
            started = time.monotonic()
            for n in range(1, 11):
                await set_meta(alice, topic, {"n": n})
            latest = await receive_json(bob)
            waited = time.monotonic() - started
            # Past the TTL, so every entry was refreshed at least twice: nothing changes.
            during_refreshes = await drain(bob, PRESENCE_TTL + 1.5)
            carol = await socket_on(served, client_tls, "w2", stack, cookies["carol"])
            listed = await enter(carol, topic)
            shell = await asyncio.to_thread(presence_in_shell, server_env, redis_server, topic)
            return first, latest, waited, during_refreshes, listed, shell

    first, latest, waited, during_refreshes, listed, shell = asyncio.run(scenario())
    assert first["user"]["meta"] == {"n": 0}
    assert latest["user"]["meta"] == {"n": 10}  # n=1..9 were never written nor told
    assert INTERVAL * 0.5 <= waited < INTERVAL * 3
    assert during_refreshes == []  # no leave, no join, no update
    assert metas(listed)["alice"] == {"n": 10}
    assert shell["alice"] == {"n": 10}
    assert "Traceback" not in served.log()
