"""End to end with REDIS_URL: daphne over TLS on the channels-redis layer, a private Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from tests.conftest import PYTHON, ROOT, daphne_tls_args, free_port, receive_json, ws_connect


@pytest.fixture(scope="module")
def daphne_redis(start, dev_certs, redis_server):
    port = free_port()
    return start(daphne_tls_args(port, dev_certs), port, REDIS_URL=redis_server)


def send_from_another_process(env: dict, redis_url: str, text: str) -> None:
    """A group message sent by a separate Django process (as the admin or a command would)."""
    code = (
        "from asgiref.sync import async_to_sync\n"
        "from channels.layers import get_channel_layer\n"
        "from realtime.broadcast import group_for\n"
        f"event = {{'type': 'realtime.send', 'text': {text!r}}}\n"
        "async_to_sync(get_channel_layer().group_send)(group_for('everyone'), event)\n"
    )
    subprocess.run(
        [PYTHON, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={**env, "REDIS_URL": redis_url},
        check=True,
        capture_output=True,
    )


def test_the_server_uses_the_redis_layer(daphne_redis):
    log = daphne_redis.log()
    assert "Channel layer: channels_redis.pubsub.RedisPubSubChannelLayer" in log
    assert "in-memory" not in log
    assert "redis://" not in log  # the URL may carry a password: never logged


def test_a_group_message_from_another_process_reaches_every_socket(
    daphne_redis, client_tls, server_env, redis_server
):
    text = json.dumps({"type": "note", "from": "another process"})
    url = f"wss://localhost:{daphne_redis.port}/ws/"

    async def scenario():
        async with ws_connect(url, client_tls) as one, ws_connect(url, client_tls) as two:
            await receive_json(one)
            await receive_json(two)
            await asyncio.to_thread(send_from_another_process, server_env, redis_server, text)
            return [await asyncio.wait_for(s.recv(), 10) for s in (one, two)]

    assert asyncio.run(scenario()) == [text, text]


def test_an_idle_socket_outlives_redis_pys_socket_timeout(daphne_redis, client_tls):
    """redis-py 8's default 5 s socket_timeout would drop idle sockets with 1011 (#422)."""
    url = f"wss://localhost:{daphne_redis.port}/ws/"

    async def scenario():
        async with ws_connect(url, client_tls, ping_interval=None) as socket_:
            await receive_json(socket_)
            started = time.monotonic()
            await asyncio.sleep(12)
            await socket_.send(json.dumps({"type": "ping"}))
            return await receive_json(socket_), time.monotonic() - started

    reply, idle = asyncio.run(scenario())
    assert reply == {"type": "pong"}
    assert idle >= 12
