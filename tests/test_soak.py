"""Soak: many WSS clients on `serve --workers 2` with random disconnects, while broadcasts and
topic messages are sent, one worker is killed, Redis is restarted and the workers are restarted
one by one (SIGHUP). It passes only when every client received every broadcast of its audience
and every message of its topic exactly once on the wire (resuming by position), in order, and
nothing of another audience.

Short by default (for `make test`); `SOAK=long make test` (or `SOAK=long pytest
tests/test_soak.py -s`) runs 200 clients and 1,000 broadcasts.

The uptime soak runs one worker past its fan-out's rejoin period (a 3 s period for 12 s; with
SOAK=long the default 600 s period for 11 minutes) with broadcasts and sign-outs throughout,
and prints the live-delivery latency per minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

from tests.helpers import (
    CAUGHT_UP,
    PYTHON,
    ROOT,
    BrowserSession,
    RestartableRedis,
    admin_send,
    create_user,
    free_port,
    latest_id,
    server_query,
    sign_out,
    ws_connect,
)
from tests.helpers import wait_until_async as until
from tests.resuming import ResumingClient, stop_clients

LONG = os.environ.get("SOAK") == "long"
CLIENTS = 200 if LONG else 40
STAFF_CLIENTS = 20 if LONG else 5
BROADCASTS = 1000 if LONG else 150
RATE = 25  # broadcasts per second
STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")


TOPIC = "orders.1"  # staff only (project/demo/topics.py): the staff clients subscribe to it


def sender_code(count: int, rate: float) -> str:
    """A separate process sending `count` broadcasts, one in four to staff only, and after
    every other broadcast a message to TOPIC."""
    return (
        "import time\n"
        "from realtime import broadcast, topics\n"
        f"for n in range({count}):\n"
        "    audience = 'staff' if n % 4 == 3 else 'everyone'\n"
        "    broadcast.send(f'soak {n}', audience=audience)\n"
        "    if n % 2:\n"
        f"        topics.send({TOPIC!r}, n)\n"
        f"    time.sleep({1 / rate})\n"
    )


def topic_offset(env: dict[str, str]) -> int:
    rows = server_query(env, "SELECT last_offset FROM realtime_topic WHERE name = %s", (TOPIC,))
    return rows[0][0] if rows else 0


def ids_by_audience(env: dict[str, str], after: int) -> dict[str, list[int]]:
    sql = "SELECT id, audience FROM realtime_broadcast WHERE id > %s ORDER BY id"
    rows = server_query(env, sql, (after,))
    return {
        "everyone": [i for i, a in rows if a == "everyone"],
        "staff": [i for i, a in rows if a == "staff"],
    }


async def flaky_network(clients: list[ResumingClient], stop: asyncio.Event) -> int:
    """Drop a random client every ~100 ms: returns how many drops."""
    drops = 0
    while not stop.is_set():
        await asyncio.sleep(random.uniform(0.05, 0.15))
        await random.choice(clients).drop()
        drops += 1
    return drops


@pytest.mark.timeout(600)
def test_soak_no_broadcast_lost_or_duplicated(start, server_env, client_tls, private_redis):
    run_soak(start, server_env, client_tls, private_redis())


def run_soak(start, server_env, client_tls, redis: RestartableRedis) -> None:
    password = create_user(server_env, "alice", staff=True)
    port = free_port()
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)],
        port,
        REDIS_URL=redis.url,
        # Every soak client comes from 127.0.0.1: the per-address cap would refuse some.
        REALTIME_WS_MAX_PER_CLIENT="0",
        # ...and its 10 reconnects a second, each resuming, are one address's replay flood.
        REALTIME_REPLAY_ADDRESS_RATE="0",
    )
    alice = BrowserSession(f"https://localhost:{port}", client_tls)
    alice.login("alice", password)
    url = f"wss://localhost:{port}/ws/"
    start_id = latest_id(server_env)
    env = {**server_env, "REDIS_URL": redis.url}

    async def scenario():
        staff = [
            ResumingClient(url, client_tls, {"Cookie": alice.cookie_header()}, topic=TOPIC)
            for _ in range(STAFF_CLIENTS)
        ]
        anonymous = [ResumingClient(url, client_tls) for _ in range(CLIENTS - STAFF_CLIENTS)]
        clients = staff + anonymous
        tasks = [asyncio.create_task(c.run()) for c in clients]
        await until(lambda: all(c.connections for c in clients), 60, "all clients connected")
        stop_flaking = asyncio.Event()
        flaking = asyncio.create_task(flaky_network(clients, stop_flaking))
        sender = await asyncio.create_subprocess_exec(
            PYTHON,
            "manage.py",
            "shell",
            "--no-imports",
            "-c",
            sender_code(BROADCASTS, RATE),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        duration = BROADCASTS / RATE
        await asyncio.sleep(duration * 0.3)
        pids = dict(STARTED.findall(server.log()))
        os.kill(int(pids["w1"]), signal.SIGKILL)
        await asyncio.sleep(duration * 0.3)
        redis.stop()
        await asyncio.sleep(1.5)
        redis.start()
        await asyncio.sleep(duration * 0.1)
        server.process.send_signal(signal.SIGHUP)  # a rolling restart, one worker at a time
        _, sender_errors = await sender.communicate()
        assert sender.returncode == 0, f"the sender failed: {sender_errors.decode()[-3000:]}"
        stop_flaking.set()
        drops = await flaking
        expected = ids_by_audience(server_env, start_id)
        everything = sorted(expected["everyone"] + expected["staff"])
        offsets = list(range(topic_start + 1, topic_offset(server_env) + 1))
        started = time.monotonic()
        wanted = [(c, everything) for c in staff] + [(c, expected["everyone"]) for c in anonymous]

        def missing() -> list[tuple[list[int], list[str], int]]:
            broadcasts = [
                (
                    sorted(set(ids) - set(c.seen))[:10],
                    c.workers[-3:],
                    c.connections,
                    c.resume_failures[-2:],
                    c.close_codes[-4:],
                )
                for c, ids in wanted
                if set(ids) - set(c.seen)
            ]
            messages = [
                (sorted(set(offsets) - set(c.topic_offsets))[:10], c.workers[-3:], c.refused)
                for c in staff
                if set(offsets) - set(c.topic_offsets)
            ]
            return broadcasts + messages

        try:
            await until(lambda: not missing(), 90, "every client to see every broadcast")
        except AssertionError as error:
            log_tail = "\n".join(server.log().splitlines()[-30:])
            raise AssertionError(f"{error}: {missing()}\nserver log:\n{log_tail}") from None
        settle = time.monotonic() - started
        await stop_clients(clients, tasks)
        return staff, anonymous, expected, everything, offsets, drops, settle

    topic_start = topic_offset(server_env)
    staff, anonymous, expected, everything, offsets, drops, settle = asyncio.run(scenario())
    start_id = min(everything) - 1
    clients = staff + anonymous
    lost = sum(len(set(everything) - set(c.seen)) for c in staff) + sum(
        len(set(expected["everyone"]) - set(c.seen)) for c in anonymous
    )
    lost += sum(len(set(offsets) - set(c.topic_offsets)) for c in staff)
    leaked = sum(len(set(expected["staff"]) & set(c.seen)) for c in anonymous)
    duplicates = sum(c.duplicates for c in clients)
    print(
        f"\nSoak: {len(clients)} clients ({len(staff)} staff, also on {TOPIC}), "
        f"{len(everything)} broadcasts ({len(expected['staff'])} staff-only) and "
        f"{len(offsets)} topic messages; faults: 1 worker SIGKILL, 1 Redis restart, 1 rolling "
        f"restart, {drops} random disconnects; reconnections "
        f"{sum(c.connections - 1 for c in clients)}; lost {lost}; duplicate frames on the wire "
        f"{duplicates}; staff-only leaked to anonymous {leaked}; last delivery {settle:.1f} s "
        "after the last send"
    )
    assert len(everything) == BROADCASTS
    assert len(offsets) == BROADCASTS // 2
    assert lost == 0
    assert duplicates == 0, [c.doubled for c in clients if c.doubled]
    for client in staff:
        assert client.topic_offsets == offsets  # each once, in order
    assert leaked == 0
    for client in staff:
        assert [i for i in client.shown() if i > start_id] == everything
    for client in anonymous:
        assert [i for i in client.shown() if i > start_id] == expected["everyone"]
    assert not any(c.resume_failures for c in clients)


# Uptime: one worker for longer than the fan-out's rejoin period, with broadcasts and sign-outs
# throughout. Long: the default period (600 s) and 11 minutes; short: a 3 s period, 12 s.
UPTIME = 660 if LONG else 12
UPTIME_ENV = {} if LONG else {"REALTIME_FANOUT_REJOIN": "3", "REALTIME_FANOUT_CHECK": "1"}
UPTIME_SOCKETS = 10
BROADCAST_EVERY = 2.0 if LONG else 0.5
SIGN_OUT_EVERY = 30.0 if LONG else 3.0
PING_EVERY = 60.0  # under the idle timeout (300 s)
LIVE = 3.0  # seconds: the database catch-up waits this long (realtime.messaging.fanout.SETTLE)


async def read_broadcasts(socket_, arrivals: list[tuple[str, float]]) -> None:
    """Note each broadcast's text and latency (sent_at to now); pings keep the socket."""
    from datetime import datetime

    last_ping = time.monotonic()
    while True:
        if time.monotonic() - last_ping > PING_EVERY:
            await socket_.send('{"type": "ping"}')
            last_ping = time.monotonic()
        try:
            message = json.loads(await asyncio.wait_for(socket_.recv(), 5))
        except TimeoutError:
            continue
        if message["type"] == "broadcast":
            sent = datetime.fromisoformat(message["sent_at"]).timestamp()
            arrivals.append((message["message"], time.time() - sent))


async def keep_broadcasting(admin, until_time: float) -> list[tuple[str, float]]:
    """Admin posts every BROADCAST_EVERY seconds: [(text, seconds since start)]."""
    sent, started, n = [], time.monotonic(), 0
    while time.monotonic() < until_time:
        text = f"uptime {n}"
        await asyncio.to_thread(admin_send, admin, text, "everyone")
        sent.append((text, time.monotonic() - started))
        n += 1
        await asyncio.sleep(BROADCAST_EVERY)
    return sent


async def keep_signing_out(port: int, tls, password: str, until_time: float) -> list[int | None]:
    """Every SIGN_OUT_EVERY seconds: sign in, open a socket, sign out; the close codes."""
    codes = []
    while time.monotonic() < until_time:
        session = await asyncio.to_thread(logged_in_session, port, tls, password)
        url = f"wss://localhost:{port}/ws/"
        async with ws_connect(
            url, tls, additional_headers={"Cookie": session.cookie_header()}
        ) as s:
            await s.recv()
            await s.send('{"type": "ping"}')
            await s.recv()  # the pong: the fan-out has registered this socket
            await asyncio.to_thread(sign_out, session)
            with contextlib.suppress(Exception):
                while True:
                    await asyncio.wait_for(s.recv(), 5)
            codes.append(s.close_code)
        await asyncio.sleep(SIGN_OUT_EVERY)
    return codes


def logged_in_session(port: int, tls, password: str) -> BrowserSession:
    session = BrowserSession(f"https://localhost:{port}", tls)
    session.login("uptime-user", password)
    return session


def latency_per_minute(sent, arrivals) -> list[tuple[int, int, float, float]]:
    """(minute, deliveries, median, max latency) by the minute each broadcast was sent."""
    minute_of = {text: int(at // 60) for text, at in sent}
    buckets: dict[int, list[float]] = {}
    for text, seconds in arrivals:
        buckets.setdefault(minute_of[text], []).append(seconds)
    return [
        (minute, len(values), sorted(values)[len(values) // 2], max(values))
        for minute, values in sorted(buckets.items())
    ]


@pytest.mark.timeout(UPTIME + 180)
def test_soak_a_worker_outlives_its_rejoin_period(start, server_env, client_tls, private_redis):
    redis = private_redis()
    admin_password = create_user(server_env, "uptime-admin", staff=True)
    user_password = create_user(server_env, "uptime-user", staff=False)
    port = free_port()
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "1", "--port", str(port)],
        port,
        REDIS_URL=redis.url,
        **UPTIME_ENV,
    )
    admin = BrowserSession(f"https://localhost:{port}", client_tls)
    admin.login("uptime-admin", admin_password)

    async def scenario():
        arrivals: list[list[tuple[str, float]]] = [[] for _ in range(UPTIME_SOCKETS)]
        async with contextlib.AsyncExitStack() as stack:
            url = f"wss://localhost:{port}/ws/"
            sockets = [
                await stack.enter_async_context(ws_connect(url, client_tls))
                for _ in range(UPTIME_SOCKETS)
            ]
            for socket_ in sockets:
                await socket_.recv()
            readers = [
                asyncio.create_task(read_broadcasts(s, a))
                for s, a in zip(sockets, arrivals, strict=True)
            ]
            until_time = time.monotonic() + UPTIME
            sent, codes = await asyncio.gather(
                keep_broadcasting(admin, until_time),
                keep_signing_out(port, client_tls, user_password, until_time),
            )
            await asyncio.sleep(LIVE)  # the last broadcast's delivery
            for reader in readers:
                reader.cancel()
            return sent, codes, arrivals

    sent, codes, arrivals = asyncio.run(scenario())
    everything = [arrival for per_socket in arrivals for arrival in per_socket]
    print(
        f"\nUptime soak: one worker for {UPTIME} s, {len(sent)} broadcasts to "
        f"{UPTIME_SOCKETS} sockets, {len(codes)} sign-outs (close codes {sorted(set(codes))})"
    )
    print("minute | deliveries | median latency (ms) | max latency (ms)")
    for minute, count, median, worst in latency_per_minute(sent, everything):
        print(f"{minute:6d} | {count:10d} | {median * 1000:19.1f} | {worst * 1000:16.1f}")
    texts = [text for text, _ in sent]
    for per_socket in arrivals:
        assert [text for text, _ in per_socket] == texts
    assert max(seconds for _, seconds in everything) < LIVE
    assert codes and set(codes) == {4001}
    assert not CAUGHT_UP.search(server.log()), "a broadcast arrived only through the catch-up"
    assert "lost the channel layer" not in server.log()
