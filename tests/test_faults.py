"""No broadcast lost through the faults production meets, each with the real pieces started:
`serve --workers 2`, a private Redis that is stopped and started again, SIGKILL and SIGTERM,
daphne's websocket_timeout; clients that reconnect and resume as the page does."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import signal
import time

import pytest
import redis

from tests.helpers import (
    PYTHON,
    BrowserSession,
    admin_send,
    create_user,
    daphne_tls_args,
    free_port,
    healthz,
    ids_after,
    latest_id,
    receive_json,
    send_broadcasts,
    ws_connect,
)
from tests.resuming import (
    report,
    start_clients,
    stop_clients,
    until_everyone_saw,
)

STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")


@pytest.fixture(scope="module")
def alice_password(server_env):
    return create_user(server_env, "alice", staff=True)


@pytest.fixture(scope="module")
def site(start, redis_server, alice_password):
    port = free_port()
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)],
        port,
        REDIS_URL=redis_server.url,
    )
    deadline = time.monotonic() + 30
    while len(set(STARTED.findall(server.log()))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    return server


def test_a_thousand_healthz_requests_leave_no_redis_subscription_behind(
    site, redis_server, client_tls
):
    """/healthz needs no login: per-request Redis state would be a leak anyone can drive."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        for _ in range(20):  # each worker has made its one check channel
            assert healthz(site.port, client_tls)[0] == 200
        before = len(client.pubsub_channels())
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: healthz(site.port, client_tls)[0], range(1000)))
        after = len(client.pubsub_channels())
    finally:
        client.close()
    assert statuses == [200] * 1000
    assert after == before


def test_healthz_says_503_with_the_reason_while_redis_is_down(site, redis_server, client_tls):
    status, body = healthz(site.port, client_tls)
    assert (status, body["status"]) == (200, "ok"), body
    redis_server.stop()
    try:
        status, body = healthz(site.port, client_tls)
        assert status == 503
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["channel_layer"] != "ok"
        assert "redis://" not in json.dumps(body)
    finally:
        redis_server.start()
    deadline = time.monotonic() + 20
    while healthz(site.port, client_tls)[0] != 200:
        assert time.monotonic() < deadline, "healthz did not recover after Redis came back"
        time.sleep(0.5)


def test_a_redis_restart_while_broadcasting_loses_nothing(
    site, redis_server, client_tls, server_env, alice_password
):
    url = f"wss://localhost:{site.port}/ws/"
    alice = BrowserSession(f"https://localhost:{site.port}", client_tls)
    alice.login("alice", alice_password)
    start_id = latest_id(server_env)

    async def scenario():
        clients, tasks = await start_clients(url, client_tls, 8)
        await asyncio.to_thread(
            send_broadcasts, server_env, redis_server.url, ["before 1", "before 2"]
        )
        redis_server.stop()
        for n in range(3):  # the admin keeps working: stored now, published when Redis is back
            await asyncio.to_thread(admin_send, alice, f"during the outage {n}", "everyone")
        await asyncio.sleep(1)
        redis_server.start()
        await asyncio.to_thread(
            send_broadcasts, server_env, redis_server.url, ["after 1", "after 2"]
        )
        expected = ids_after(server_env, start_id)
        await until_everyone_saw(clients, expected, 40)
        await stop_clients(clients, tasks)
        return clients, expected

    clients, expected = asyncio.run(scenario())
    report("Redis restart", clients, expected)
    assert len(expected) == 7
    for client in clients:
        assert client.shown()[-7:] == expected
        assert 1011 not in client.close_codes, "a consumer crashed"
        assert not client.resume_failures


def test_clients_of_a_worker_killed_with_sigkill_reconnect_and_miss_nothing(
    site, redis_server, client_tls, server_env
):
    url = f"wss://localhost:{site.port}/ws/"
    start_id = latest_id(server_env)

    async def scenario():
        clients, tasks = await start_clients(url, client_tls, 12)
        pids = dict(STARTED.findall(site.log()))
        victim = clients[0].workers[-1]
        os.kill(int(pids[victim]), signal.SIGKILL)
        await asyncio.to_thread(
            send_broadcasts,
            server_env,
            redis_server.url,
            [f"while {victim} is down {n}" for n in range(3)],
        )
        expected = ids_after(server_env, start_id)
        await until_everyone_saw(clients, expected, 30)
        await stop_clients(clients, tasks)
        return clients, expected, victim

    clients, expected, victim = asyncio.run(scenario())
    report("Worker SIGKILL", clients, expected)
    moved = [c for c in clients if c.workers[0] == victim]
    assert moved, "no client was on the killed worker"
    assert all(c.connections >= 2 for c in moved)
    for client in clients:
        assert client.shown()[-3:] == expected


def test_sigterm_closes_websockets_with_1001(start, redis_server, client_tls):
    port = free_port()
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)],
        port,
        REDIS_URL=redis_server.url,
    )

    async def scenario():
        sockets = []
        async with (
            ws_connect(f"wss://localhost:{port}/ws/", client_tls) as one,
            ws_connect(f"wss://localhost:{port}/ws/", client_tls) as two,
        ):
            for socket_ in (one, two):
                await receive_json(socket_)
                sockets.append(socket_)
            os.killpg(server.process.pid, signal.SIGTERM)
            for socket_ in sockets:
                await asyncio.wait_for(socket_.wait_closed(), 15)
            return [s.close_code for s in sockets], [s.close_reason for s in sockets]

    codes, reasons = asyncio.run(scenario())
    assert codes == [1001, 1001]
    assert reasons == ["server shutting down"] * 2
    assert server.process.wait(timeout=20) == 0


def test_clients_resume_after_daphnes_websocket_timeout(
    start, dev_certs, redis_server, client_tls, server_env
):
    port = free_port()
    args = daphne_tls_args(port, dev_certs)
    args[-1:-1] = ["--websocket_timeout", "2"]
    start(args, port, REDIS_URL=redis_server.url)
    start_id = latest_id(server_env)

    async def scenario():
        clients, tasks = await start_clients(f"wss://localhost:{port}/ws/", client_tls, 3)
        for n in range(4):
            await asyncio.to_thread(send_broadcasts, server_env, redis_server.url, [f"tick {n}"])
            await asyncio.sleep(1)
        expected = ids_after(server_env, start_id)
        await until_everyone_saw(clients, expected, 20)
        await stop_clients(clients, tasks)
        return clients, expected

    clients, expected = asyncio.run(scenario())
    report("websocket_timeout", clients, expected)
    assert all(c.connections >= 2 for c in clients), "daphne did not close the sockets"
    assert all(c.shown()[-4:] == expected for c in clients)
