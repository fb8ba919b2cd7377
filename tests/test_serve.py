"""End to end: `manage.py serve`, N daphne workers on one TLS port (SO_REUSEPORT), supervised.

Real `serve` subprocesses on free ports with a private Redis; WSS clients that verify the
dev certificate; worker pids read from the supervisor's "worker wN started (pid N)" lines.
Everything that waits polls against a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from realtime.server.supervisor import MAX_DELAY, QUICK_EXIT, restart_delay
from tests.helpers import PYTHON, ROOT, free_port, receive_json, slot, ws_connect

STARTED = re.compile(r"^worker (w\d+) started \(pid (\d+)\)$", re.MULTILINE)
CLIENTS = 16


def serve_args(port: int, workers: int, *extra: str) -> list[str]:
    return [PYTHON, "manage.py", "serve", "--workers", str(workers), "--port", str(port), *extra]


def started(log: str) -> list[tuple[str, int]]:
    """(worker, pid) for every "started" line of the supervisor, in order."""
    return [(name, int(pid)) for name, pid in STARTED.findall(log)]


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not count: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def eventually(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)
    return result


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    return asyncio.run(eventually(condition, timeout, what))


async def welcomed(stack: contextlib.AsyncExitStack, url: str, tls) -> tuple[str, ClientConnection]:
    socket_ = await stack.enter_async_context(ws_connect(url, tls))
    welcome = await receive_json(socket_)
    assert welcome["secure"] is True
    return slot(welcome["worker"]), socket_


async def clients_on(
    stack: contextlib.AsyncExitStack, url: str, tls, workers: set[str], timeout: float = 30
) -> dict[str, list[ClientConnection]]:
    """At least CLIENTS open sockets, more until each worker in `workers` has some."""
    by_worker: dict[str, list[ClientConnection]] = defaultdict(list)
    deadline = time.monotonic() + timeout
    while sum(map(len, by_worker.values())) < CLIENTS or not workers <= by_worker.keys():
        if time.monotonic() > deadline:
            counts = {name: len(sockets) for name, sockets in by_worker.items()}
            raise AssertionError(f"clients reached only {counts}, not all of {workers}")
        worker, socket_ = await welcomed(stack, url, tls)
        by_worker[worker].append(socket_)
    return by_worker


async def reach(url: str, tls, worker: str, timeout: float) -> None:
    """Open short-lived clients until one is welcomed by `worker`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with contextlib.AsyncExitStack() as stack:
            with contextlib.suppress(OSError):
                if (await welcomed(stack, url, tls))[0] == worker:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no new client reached {worker} within {timeout} s")


async def ping(socket_: ClientConnection) -> dict:
    await socket_.send(json.dumps({"type": "ping"}))
    return await receive_json(socket_)


# --- Restart policy (pure) -------------------------------------------------------------------


def test_restart_delay_doubles_while_a_worker_keeps_dying_quickly():
    delays, previous = [], None
    for _ in range(7):
        previous = restart_delay(previous, ran_for=0.5)
        delays.append(previous)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_DELAY, MAX_DELAY]


def test_restart_delay_resets_after_a_long_run():
    assert restart_delay(16.0, ran_for=QUICK_EXIT + 1) == 1.0


# --- Refusals --------------------------------------------------------------------------------


def run_serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "manage.py", "serve", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_several_workers_without_redis_are_refused(server_env):
    env = {k: v for k, v in server_env.items() if k != "REDIS_URL"}
    port = free_port()
    result = run_serve(env, "--workers", "2", "--port", str(port))
    assert result.returncode != 0
    assert "the in-memory layer only works inside one process" in result.stderr
    assert "Set REDIS_URL" in result.stderr
    assert "started" not in result.stdout
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), 2).close()


def test_a_missing_certificate_is_refused_by_name(server_env, dev_certs, tmp_path):
    missing = tmp_path / "missing.pem"
    result = run_serve(server_env, "--cert", str(missing), "--key", str(dev_certs.key))
    assert result.returncode != 0
    assert f"Cannot read the certificate file {missing}" in result.stderr
    assert "started" not in result.stdout


# --- Serving ---------------------------------------------------------------------------------


def test_one_worker_needs_no_redis(start, client_tls):
    port = free_port()
    server = start(serve_args(port, 1), port)

    async def scenario():
        async with ws_connect(f"wss://localhost:{port}/ws/", client_tls) as socket_:
            return await receive_json(socket_)

    # The welcome names the machine and the worker's slot.
    assert asyncio.run(scenario())["worker"] == f"{socket.gethostname()}-w1"
    assert "with 1 daphne worker(s)" in server.log()


def test_workers_share_the_port_and_a_killed_one_is_restarted(
    start, redis_server, dev_certs, client_tls
):
    port = free_port()
    tls_files = ("--cert", str(dev_certs.cert), "--key", str(dev_certs.key))
    server = start(serve_args(port, 2, *tls_files), port, REDIS_URL=redis_server.url)
    url = f"wss://localhost:{port}/ws/"

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            clients = await clients_on(stack, url, client_tls, {"w1", "w2"})
            pids = dict(started(server.log()))
            os.kill(pids["w1"], signal.SIGKILL)
            for socket_ in clients["w1"]:
                with pytest.raises(ConnectionClosed):
                    await receive_json(socket_)
            for socket_ in clients["w2"]:
                assert await ping(socket_) == {"type": "pong"}
            restarted = await eventually(
                lambda: [pid for name, pid in started(server.log()) if name == "w1"][1:],
                15,
                "a new 'worker w1 started' line",
            )
            assert restarted[0] != pids["w1"]
            assert alive(restarted[0])
            await reach(url, client_tls, "w1", timeout=30)
            for socket_ in clients["w2"]:
                assert await ping(socket_) == {"type": "pong"}
            return pids["w1"]

    killed = asyncio.run(scenario())
    assert f"worker w1 (pid {killed}) exited with code -9; restarting in 1.0 s" in server.log()


def test_sigterm_stops_every_worker_and_exits_0(start, redis_server, client_tls):
    port = free_port()
    server = start(serve_args(port, 2), port, REDIS_URL=redis_server.url)
    url = f"wss://localhost:{port}/ws/"

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            clients = await clients_on(stack, url, client_tls, {"w1", "w2"})
            server.process.send_signal(signal.SIGTERM)
            await eventually(lambda: server.process.poll() is not None, 15, "serve exits")
            for socket_ in (s for sockets in clients.values() for s in sockets):
                with pytest.raises(ConnectionClosed):
                    await receive_json(socket_, timeout=5)

    asyncio.run(scenario())
    assert server.process.returncode == 0
    pids = [pid for _, pid in started(server.log())]
    assert len(pids) == 2
    wait_until(lambda: not any(map(alive, pids)), 5, f"workers {pids} are gone")
    assert "all workers stopped" in server.log()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_killed_supervisor(start):
    port = free_port()
    server = start(serve_args(port, 1), port)
    [(_, pid)] = started(server.log())
    server.process.kill()
    server.process.wait(timeout=10)
    wait_until(lambda: not alive(pid), 10, f"worker {pid} is gone")
