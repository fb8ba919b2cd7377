"""A worker's fan-out over its whole life, on both Redis layers: `serve --workers 2`, a private
Redis, real logins, admin posts and sign-outs over HTTPS.

The fan-out renews its group memberships every REALTIME_FANOUT_REJOIN seconds and checks every
REALTIME_FANOUT_CHECK seconds that an event sent through the layer comes back. These tests set
those periods (and the core layer's group expiry) to seconds and run through several of them:
broadcasts keep arriving live, signing out and demotion keep closing sockets. Then Redis goes
away, frozen on one layer and stopped on the other: the worker says so once, /healthz says why,
signed-in sockets are closed with 1013, and everything works again once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from datetime import datetime

import pytest

from tests.helpers import (
    CAUGHT_UP,
    PYTHON,
    admin_send,
    close_code,
    create_users,
    demote,
    drain,
    free_port,
    healthz,
    logged_in,
    open_on_both_workers,
    open_spread,
    pongs,
    receive_json,
    sign_out,
    wait_until,
    ws_connect,
)

REJOIN = 2  # seconds, REALTIME_FANOUT_REJOIN
GROUP_EXPIRY = 4  # seconds, REDIS_GROUP_EXPIRY (the core layer's): twice the rejoin period
CHECK = 1  # seconds, REALTIME_FANOUT_CHECK
CHECK_TIMEOUT = 2  # seconds, REALTIME_FANOUT_CHECK_TIMEOUT
ROUNDS = 3
# Live delivery takes milliseconds; the database catch-up waits 3 s
# (realtime.messaging.fanout.SETTLE).
LIVE = 1.5
LOST = "Broadcast fan-out lost the channel layer"
REGAINED = "Broadcast fan-out has the channel layer again"
LAYERS = ["pubsub", "core"]


@pytest.fixture(scope="module")
def passwords(server_env):
    staff_by_name = {"ops": True}
    for layer in LAYERS:
        staff_by_name[f"erin-{layer}"] = False
        for n in range(1, ROUNDS + 1):
            staff_by_name[f"carol-{layer}-{n}"] = True
            staff_by_name[f"dave-{layer}-{n}"] = False
    return create_users(server_env, staff_by_name)


@pytest.fixture(scope="module", params=LAYERS)
def layer_site(request, start, private_redis, passwords):
    """(layer, serve --workers 2 with short fan-out periods, its private Redis)."""
    layer = request.param
    redis = private_redis()
    port = free_port()
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)],
        port,
        REDIS_URL=redis.url,
        REDIS_CHANNEL_LAYER=layer,
        REDIS_GROUP_EXPIRY=str(GROUP_EXPIRY),
        REALTIME_FANOUT_REJOIN=str(REJOIN),
        REALTIME_FANOUT_CHECK=str(CHECK),
        REALTIME_FANOUT_CHECK_TIMEOUT=str(CHECK_TIMEOUT),
    )
    yield layer, server, redis
    server.stop()


def latency(message: dict) -> float:
    return time.time() - datetime.fromisoformat(message["sent_at"]).timestamp()


async def live_broadcast(ops, sockets, text: str, audience: str = "everyone") -> list[float]:
    """Send from the admin; the latency at which each socket received it."""
    await asyncio.to_thread(admin_send, ops, text, audience)
    latencies = []
    for socket_ in sockets:
        message = await receive_json(socket_, 10)
        assert message["message"] == text
        latencies.append(latency(message))
    return latencies


async def staff_view_after_demotion(url, tls, stack, carol, ops, ops_socket, n) -> list[str]:
    """Reconnect with a demoted user's cookie; what reaches that socket of a staff broadcast
    and an everyone broadcast sent after it (the staff one reaches a staff socket)."""
    cookie = {"Cookie": carol.cookie_header()}
    again = await stack.enter_async_context(ws_connect(url, tls, additional_headers=cookie))
    await receive_json(again)
    assert await pongs(again)
    await asyncio.to_thread(admin_send, ops, f"staff only {n}", "staff")
    await asyncio.to_thread(admin_send, ops, f"after demotion {n}", "everyone")
    staff_seen = [(await receive_json(ops_socket))["message"] for _ in range(2)]
    assert staff_seen == [f"staff only {n}", f"after demotion {n}"]
    return [(await receive_json(again))["message"]]


def test_broadcasts_sign_outs_and_demotions_work_through_every_rejoin_period(
    layer_site, client_tls, server_env, passwords
):
    layer, server, redis = layer_site
    url = f"wss://localhost:{server.port}/ws/"
    ops = logged_in(server.port, client_tls, "ops", passwords)

    async def scenario():
        rounds = []
        async with contextlib.AsyncExitStack() as stack:
            watchers = await open_spread(url, client_tls, 6, stack)
            ops_socket = (
                await open_spread(
                    url, client_tls, 1, stack, additional_headers={"Cookie": ops.cookie_header()}
                )
            )[0][0]
            assert all([await pongs(s) for s, _ in watchers]) and await pongs(ops_socket)
            for n in range(1, ROUNDS + 1):
                # Past the rejoin period and the core layer's group expiry, every round.
                await asyncio.sleep(GROUP_EXPIRY + 0.5)
                sockets = [s for s, _ in watchers] + [ops_socket]
                latencies = await live_broadcast(ops, sockets, f"round {n}")
                dave = logged_in(server.port, client_tls, f"dave-{layer}-{n}", passwords)
                daves = await open_on_both_workers(url, client_tls, stack, dave.cookie_header())
                assert all([await pongs(s) for s, _ in daves])
                started = time.monotonic()
                await asyncio.to_thread(sign_out, dave)
                dave_codes = [await close_code(s, 5) for s, _ in daves]
                sign_out_took = time.monotonic() - started
                carol = logged_in(server.port, client_tls, f"carol-{layer}-{n}", passwords)
                carols = await open_on_both_workers(url, client_tls, stack, carol.cookie_header())
                assert all([await pongs(s) for s, _ in carols])
                await asyncio.to_thread(
                    demote,
                    {**server_env, "REDIS_CHANNEL_LAYER": layer},
                    redis.url,
                    f"carol-{layer}-{n}",
                )
                carol_codes = [await close_code(s, 5) for s, _ in carols]
                demoted_view = await staff_view_after_demotion(
                    url, client_tls, stack, carol, ops, ops_socket, n
                )
                for socket_, _ in watchers:  # anonymous: "after demotion n" only
                    assert (await receive_json(socket_))["message"] == f"after demotion {n}"
                rounds.append(
                    {
                        "latencies": latencies,
                        "dave": dave_codes,
                        "sign_out_took": sign_out_took,
                        "carol": carol_codes,
                        "demoted_view": demoted_view,
                        "workers": {w for _, w in daves} | {w for _, w in carols},
                    }
                )
        return rounds

    rounds = asyncio.run(scenario())
    print(f"\n{layer}: max live latency per round (s):", [max(r["latencies"]) for r in rounds])
    assert len(rounds) == ROUNDS
    for n, result in enumerate(rounds, 1):
        assert max(result["latencies"]) < LIVE, (n, result["latencies"])
        assert result["workers"] == {"w1", "w2"}
        assert set(result["dave"]) == {4001}, (n, result)
        assert result["sign_out_took"] < 5
        assert set(result["carol"]) == {4001}, (n, result)
        assert result["demoted_view"] == [f"after demotion {n}"]
    log = server.log()
    assert not CAUGHT_UP.search(log), "a broadcast arrived only through the database catch-up"
    assert LOST not in log
    assert "RuntimeError" not in log


def test_losing_redis_is_said_once_closes_signed_in_sockets_and_recovers(
    layer_site, client_tls, server_env, passwords
):
    """pubsub: Redis frozen (SIGSTOP), so only the check's timeout notices; core: Redis
    stopped and started empty, so the groups must be joined again."""
    layer, server, redis = layer_site
    url = f"wss://localhost:{server.port}/ws/"
    ops = logged_in(server.port, client_tls, "ops", passwords)
    erin = logged_in(server.port, client_tls, f"erin-{layer}", passwords)
    outage = 4 * (CHECK + CHECK_TIMEOUT)
    lost_before = server.log().count(LOST)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            anonymous = await open_spread(url, client_tls, 4, stack)
            erins = await open_on_both_workers(url, client_tls, stack, erin.cookie_header())
            assert all([await pongs(s) for s, _ in anonymous + erins])
            if layer == "pubsub":
                os.kill(redis.process.pid, signal.SIGSTOP)
            else:
                redis.stop()
            try:
                erin_codes = [await close_code(s, CHECK + CHECK_TIMEOUT + 5) for s, _ in erins]
                status, body = await asyncio.to_thread(healthz, server.port, client_tls)
                await asyncio.sleep(outage)
                anonymous_open = [s.close_code is None for s, _ in anonymous]
                paused = [await drain(s, 0.5) for s, _ in anonymous]
            finally:
                if layer == "pubsub":
                    os.kill(redis.process.pid, signal.SIGCONT)
                else:
                    redis.start()
            await asyncio.to_thread(
                wait_until,
                lambda: server.log().count(REGAINED) >= 2,
                "both workers to have the layer again",
                CHECK + CHECK_TIMEOUT + 15,
            )
            live_again = [await drain(s, 1) for s, _ in anonymous]
            again = await open_on_both_workers(url, client_tls, stack, erin.cookie_header())
            assert all([await pongs(s) for s, _ in again])
            sockets = [s for s, _ in anonymous + again]
            latencies = await live_broadcast(ops, sockets, f"after the outage on {layer}")
            return erin_codes, status, body, anonymous_open, latencies, paused, live_again

    erin_codes, status, body, anonymous_open, latencies, paused, live_again = asyncio.run(
        scenario()
    )
    # Open sockets are told, so that the page says "live updates paused", not "open".
    lost = {"type": "status", "live": False, "reason": "The server lost its channel layer"}
    assert all(messages == [lost] for messages in paused), paused
    assert all(messages == [{"type": "status", "live": True}] for messages in live_again)
    assert set(erin_codes) == {1013}
    assert status == 503
    assert body["checks"]["fanout"].startswith("lost the channel layer"), body
    assert "redis://" not in json.dumps(body)
    assert all(anonymous_open), "anonymous sockets have no rights to go stale"
    # Once per worker for this outage, not once a second.
    assert server.log().count(LOST) - lost_before == 2
    assert max(latencies) < LIVE, latencies
    status, body = healthz(server.port, client_tls)
    assert status == 200, body
