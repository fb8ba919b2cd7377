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

from tests.helpers import (
    PYTHON,
    ROOT,
    BrowserSession,
    admin_send,
    close_code,
    create_user,
    demote,
    drain,
    free_port,
    logged_in,
    open_on_both_workers,
    open_spread,
    pongs,
    receive_json,
    sign_out,
    slot,
    wait_until,
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
    server = start(serve_args(port), port, REDIS_URL=redis_server.url)
    wait_until(lambda: len(worker_pids(server)) == 2, "both workers started")
    return server


def worker_pids(server) -> dict[str, int]:
    """The latest pid of each worker, from the supervisor's log."""
    return {name: int(pid) for name, pid in STARTED.findall(server.log())}


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
                run_broadcast_command, server_env, redis_server.url, "command to everyone"
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
                run_broadcast_command, server_env, redis_server.url, "after the crash"
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
                if slot((await receive_json(socket_))["worker"]) == victim:
                    await asyncio.to_thread(
                        run_broadcast_command, server_env, redis_server.url, "welcome back"
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
        start(serve_args(port), port, REDIS_URL=redis_server.url)
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
            await asyncio.to_thread(demote, server_env, redis_server.url, "carol")
            carol_codes = [await close_code(s) for s, _ in carols]
            alive = [await pongs(s) for s, _ in others]
            workers = {w for _, w in carols} | {w for _, w in daves}
            return dave_codes, carol_codes, alive, workers

    dave_codes, carol_codes, alive, workers = asyncio.run(scenario())
    assert workers == {"w1", "w2"}
    assert set(dave_codes) == {4001}
    assert set(carol_codes) == {4001}
    assert alive == [True] * 4
