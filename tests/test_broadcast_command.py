"""`manage.py broadcast`: sends through Redis to the servers, and fails clearly when it cannot."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
import redis
from django.core.management import CommandError, call_command

from realtime.models import Broadcast
from tests.helpers import (
    PYTHON,
    ROOT,
    clients_in_presence,
    daphne_tls_args,
    free_port,
    receive_json,
    wait_until_async,
    ws_connect,
)


@pytest.mark.django_db
def test_it_refuses_the_in_memory_layer_and_stores_nothing():
    with pytest.raises(CommandError) as info:
        call_command("broadcast", "hello")
    assert "in-memory" in str(info.value)
    assert "REDIS_URL" in str(info.value)
    assert not Broadcast.objects.exists()


def manage_broadcast(env: dict, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "manage.py", "broadcast", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_exits_non_zero_when_redis_cannot_be_reached(server_env):
    closed_port = free_port()
    result = manage_broadcast(
        {**server_env, "REDIS_URL": f"redis://127.0.0.1:{closed_port}/0"}, "hello"
    )
    assert result.returncode == 1
    assert "Cannot reach Redis" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_refuses_an_unknown_level(server_env):
    result = manage_broadcast(server_env, "hello", "--level", "panic")
    assert result.returncode != 0
    assert "invalid choice: 'panic'" in result.stderr


@pytest.fixture(scope="module")
def daphne_redis(start, dev_certs, redis_server):
    port = free_port()
    return start(daphne_tls_args(port, dev_certs), port, REDIS_URL=redis_server.url)


def test_it_reaches_the_server_processes_through_redis(
    daphne_redis, client_tls, server_env, redis_server
):
    env = {**server_env, "REDIS_URL": redis_server.url}
    url = f"wss://localhost:{daphne_redis.port}/ws/"
    counted = redis.Redis.from_url(redis_server.url)

    async def scenario():
        async with ws_connect(url, client_tls) as socket_:
            await receive_json(socket_)
            await wait_until_async(lambda: clients_in_presence(counted) == 1, 10, "presence")
            first = await asyncio.to_thread(manage_broadcast, env, "first", "--level", "error")
            second = await asyncio.to_thread(manage_broadcast, env, "second")
            return first, second, [await receive_json(socket_) for _ in range(2)]

    first, second, received = asyncio.run(scenario())
    counted.close()
    assert first.returncode == 0, first.stderr
    assert "sent to everyone (1 connected client(s) at that moment)" in first.stdout
    assert [m["message"] for m in received] == ["first", "second"]
    assert received[0]["level"] == "error"
    assert received[1]["id"] > received[0]["id"]
    assert json.loads(json.dumps(received[0]))["sent_at"].endswith("+00:00")


def test_app_code_can_send_twice_from_one_sync_process(
    daphne_redis, client_tls, server_env, redis_server
):
    """async_to_sync runs each publish in a new event loop (channels_redis#332, channels#1966)."""
    code = (
        "from realtime import broadcast\n"
        "for n in range(3):\n"
        "    assert broadcast.send(f'app {n}').published_at is not None\n"
    )
    env = {**server_env, "REDIS_URL": redis_server.url}
    url = f"wss://localhost:{daphne_redis.port}/ws/"

    async def scenario():
        async with ws_connect(url, client_tls) as socket_:
            await receive_json(socket_)
            result = await asyncio.to_thread(
                subprocess.run,
                [PYTHON, "manage.py", "shell", "--no-imports", "-c", code],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            return [(await receive_json(socket_))["message"] for _ in range(3)]

    assert asyncio.run(scenario()) == ["app 0", "app 1", "app 2"]
