"""Broadcasts across workers: `serve --workers 2` on one TLS port, a private Redis, real
logins and admin form posts over HTTPS, the broadcast command, and a worker killed with
SIGKILL; then two `serve` instances (standing in for two hosts) sharing one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time

import pytest

from tests.conftest import (
    PYTHON,
    ROOT,
    BrowserSession,
    admin_send,
    create_user,
    drain,
    free_port,
    receive_json,
    run_in_shell,
    ws_connect,
)

STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")


def serve_args(port: int) -> list[str]:
    return [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]


@pytest.fixture(scope="module")
def users(server_env):
    return {
        "alice": create_user(server_env, "alice", staff=True),
        "bob": create_user(server_env, "bob", staff=False),
    }


@pytest.fixture(scope="module")
def served(start, redis_server, users):
    port = free_port()
    server = start(serve_args(port), port, REDIS_URL=redis_server)
    wait_until(lambda: len(worker_pids(server)) == 2, "both workers started")
    return server


def worker_pids(server) -> dict[str, int]:
    """The latest pid of each worker, from the supervisor's log."""
    return {name: int(pid) for name, pid in STARTED.findall(server.log())}


def wait_until(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def logged_in(port: int, tls, username: str, users: dict) -> BrowserSession:
    session = BrowserSession(f"https://localhost:{port}", tls)
    session.login(username, users[username])
    return session


def connected_now(session: BrowserSession) -> int:
    """The admin's presence figure: clients connected now over all workers."""
    _, html = session.request("/admin/realtime/broadcast/")
    return int(re.search(r'data-audience="everyone">(\d+)<', html).group(1))


def run_broadcast_command(env: dict, redis_url: str, message: str) -> None:
    result = subprocess.run(
        [PYTHON, "manage.py", "broadcast", message],
        cwd=ROOT,
        env={**env, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


async def open_spread(url: str, tls, count: int, stack: contextlib.AsyncExitStack, **kw):
    """Open `count` sockets; returns [(socket, worker)]."""
    sockets = []
    for _ in range(count):
        socket_ = await stack.enter_async_context(ws_connect(url, tls, **kw))
        sockets.append((socket_, (await receive_json(socket_))["worker"]))
    return sockets


def test_every_client_on_both_workers_gets_admin_and_command_broadcasts_by_audience(
    served, client_tls, users, server_env, redis_server
):
    url = f"wss://localhost:{served.port}/ws/"
    alice = logged_in(served.port, client_tls, "alice", users)
    bob = logged_in(served.port, client_tls, "bob", users)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            anonymous = await open_spread(url, client_tls, 12, stack)
            signed_in = await open_spread(
                url, client_tls, 4, stack, additional_headers={"Cookie": bob.cookie_header()}
            )
            staff = await open_spread(
                url, client_tls, 4, stack, additional_headers={"Cookie": alice.cookie_header()}
            )
            await asyncio.to_thread(
                wait_until, lambda: connected_now(alice) == 20, "presence of 20 clients"
            )
            await asyncio.to_thread(admin_send, alice, "admin to everyone", "everyone")
            await asyncio.to_thread(admin_send, alice, "admin to staff", "staff")
            await asyncio.to_thread(
                run_broadcast_command, server_env, redis_server, "command to everyone"
            )
            groups = {"anonymous": anonymous, "signed_in": signed_in, "staff": staff}
            seen = {}
            for name, sockets in groups.items():
                drained = await asyncio.gather(*(drain(s, 2) for s, _ in sockets))
                seen[name] = [[m["message"] for m in messages] for messages in drained]
            workers = {w for sockets in groups.values() for _, w in sockets}
            return workers, seen

    workers, seen = asyncio.run(scenario())
    assert workers == {"w1", "w2"}
    everyone = ["admin to everyone", "command to everyone"]
    assert all(messages == everyone for messages in seen["anonymous"])
    assert all(messages == everyone for messages in seen["signed_in"])
    staff_view = ["admin to everyone", "admin to staff", "command to everyone"]
    assert all(messages == staff_view for messages in seen["staff"])


def test_a_worker_killed_with_sigkill_leaves_the_other_serving_and_comes_back(
    served, client_tls, server_env, redis_server, users
):
    url = f"wss://localhost:{served.port}/ws/"
    before = worker_pids(served)
    alice = logged_in(served.port, client_tls, "alice", users)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            sockets = await open_spread(url, client_tls, 16, stack)
            victim = sockets[0][1]
            os.kill(before[victim], signal.SIGKILL)
            survivors = [s for s, worker in sockets if worker != victim]
            casualties = [s for s, worker in sockets if worker == victim]
            for socket_ in casualties:
                await asyncio.wait_for(socket_.wait_closed(), 10)
            await asyncio.to_thread(
                run_broadcast_command, server_env, redis_server, "after the crash"
            )
            received = [await receive_json(s) for s in survivors]
            # The dead worker's presence entry expires on its own (PRESENCE_TTL).
            await asyncio.to_thread(
                wait_until,
                lambda: connected_now(alice) == len(survivors),
                "the dead worker's clients to leave the presence count",
                25,
            )
            return victim, received

    victim, received = asyncio.run(scenario())
    assert received and all(m["message"] == "after the crash" for m in received)
    wait_until(
        lambda: worker_pids(served)[victim] != before[victim], f"{victim} restarted", timeout=20
    )

    async def reach_restarted_worker():
        deadline = time.monotonic() + 30  # the new daphne needs a moment before it listens
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            async with ws_connect(url, client_tls) as socket_:
                if (await receive_json(socket_))["worker"] == victim:
                    await asyncio.to_thread(
                        run_broadcast_command, server_env, redis_server, "welcome back"
                    )
                    return await receive_json(socket_)
        return None

    message = asyncio.run(reach_restarted_worker())
    assert message is not None, f"no connection reached the restarted {victim}"
    assert message["message"] == "welcome back"


def test_two_serve_instances_sharing_one_redis_deliver_each_others_broadcasts(
    start, redis_server, client_tls, users
):
    ports = [free_port(), free_port()]
    for port in ports:
        start(serve_args(port), port, REDIS_URL=redis_server)
    admins = [logged_in(port, client_tls, "alice", users) for port in ports]

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    ws_connect(f"wss://localhost:{port}/ws/", client_tls)
                )
                for port in ports
            ]
            for client in clients:
                await receive_json(client)
            await asyncio.to_thread(admin_send, admins[0], "from host A", "everyone")
            await asyncio.to_thread(admin_send, admins[1], "from host B", "everyone")
            return [[m["message"] for m in await drain(c, 2)] for c in clients]

    on_a, on_b = asyncio.run(scenario())
    assert on_a == ["from host A", "from host B"]
    assert on_b == ["from host A", "from host B"]


async def open_on_both_workers(url: str, tls, stack: contextlib.AsyncExitStack, cookie: str):
    """Open signed-in sockets until both workers hold at least one (the kernel spreads them)."""
    sockets = await open_spread(url, tls, 2, stack, additional_headers={"Cookie": cookie})
    while len({worker for _, worker in sockets}) < 2 and len(sockets) < 40:
        sockets += await open_spread(url, tls, 1, stack, additional_headers={"Cookie": cookie})
    return sockets


async def close_code(socket_, timeout: float = 10) -> int | None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(drain(socket_, timeout), timeout + 1)
    await asyncio.wait_for(socket_.wait_closed(), timeout)
    return socket_.close_code


async def pongs(socket_) -> bool:
    await socket_.send('{"type": "ping"}')
    return (await receive_json(socket_))["type"] == "pong"


def sign_out(session: BrowserSession) -> None:
    _, page = session.request("/")
    session.request("/accounts/logout/", {"csrfmiddlewaretoken": session.csrf_token(page)})


def demote(env: dict, redis_url: str, username: str) -> None:
    """What an admin does in another process: the user is no longer staff."""
    code = (
        "from django.contrib.auth import get_user_model\n"
        f"user = get_user_model().objects.get(username={username!r})\n"
        "user.is_staff = user.is_superuser = False\n"
        "user.save()\n"
    )
    run_in_shell({**env, "REDIS_URL": redis_url}, code)


def test_signing_out_and_losing_staff_close_the_sockets_on_both_workers(
    served, client_tls, server_env, redis_server
):
    url = f"wss://localhost:{served.port}/ws/"
    passwords = {
        "carol": create_user(server_env, "carol", staff=True),
        "dave": create_user(server_env, "dave", staff=False),
    }
    carol = logged_in(served.port, client_tls, "carol", passwords)
    dave = logged_in(served.port, client_tls, "dave", passwords)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            carols = await open_on_both_workers(url, client_tls, stack, carol.cookie_header())
            daves = await open_on_both_workers(url, client_tls, stack, dave.cookie_header())
            others = await open_spread(url, client_tls, 4, stack)
            # A socket answers once its worker's fan-out has registered it.
            assert all([await pongs(s) for s, _ in carols + daves + others])
            await asyncio.to_thread(sign_out, dave)
            dave_codes = [await close_code(s) for s, _ in daves]
            await asyncio.to_thread(demote, server_env, redis_server, "carol")
            carol_codes = [await close_code(s) for s, _ in carols]
            alive = [await pongs(s) for s, _ in others]
            workers = {w for _, w in carols} | {w for _, w in daves}
            return dave_codes, carol_codes, alive, workers

    dave_codes, carol_codes, alive, workers = asyncio.run(scenario())
    assert workers == {"w1", "w2"}
    assert set(dave_codes) == {4001}
    assert set(carol_codes) == {4001}
    assert alive == [True] * 4
