"""End to end with REDIS_URL: daphne over TLS on the channels-redis layer, a private Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time

import pytest
import redis

from tests.helpers import (
    PYTHON,
    ROOT,
    daphne_tls_args,
    free_port,
    open_spread,
    receive_json,
    send_broadcasts,
    wait_for_port,
    ws_connect,
)


@pytest.fixture(scope="module")
def daphne_redis(start, dev_certs, redis_server):
    port = free_port()
    return start(daphne_tls_args(port, dev_certs), port, REDIS_URL=redis_server.url)


def send_from_another_process(env: dict, redis_url: str, text: str) -> None:
    """A broadcast sent by a separate Django process (as the admin or a command would)."""
    code = f"from realtime import broadcast\nbroadcast.send({text!r})\n"
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
    text = "from another process"
    url = f"wss://localhost:{daphne_redis.port}/ws/"

    async def scenario():
        async with ws_connect(url, client_tls) as one, ws_connect(url, client_tls) as two:
            await receive_json(one)
            await receive_json(two)
            await asyncio.to_thread(send_from_another_process, server_env, redis_server.url, text)
            return [await receive_json(s) for s in (one, two)]

    assert [m["message"] for m in asyncio.run(scenario())] == [text, text]


IDLE = 7  # seconds


def test_an_idle_socket_outlives_redis_pys_socket_timeout(daphne_redis, client_tls):
    """redis-py 8's default 5 s socket_timeout would drop idle sockets with 1011 (#422)."""
    url = f"wss://localhost:{daphne_redis.port}/ws/"

    async def scenario():
        async with ws_connect(url, client_tls, ping_interval=None) as socket_:
            await receive_json(socket_)
            started = time.monotonic()
            # Nothing must happen while it idles: a negative check, so a wait. Past the 5 s
            # timeout, with a margin for a loaded machine.
            await asyncio.sleep(IDLE)
            await socket_.send(json.dumps({"type": "ping"}))
            return await receive_json(socket_), time.monotonic() - started

    reply, idle = asyncio.run(scenario())
    assert reply == {"type": "pong"}
    assert idle >= IDLE


@pytest.fixture(scope="module")
def sentinel(redis_server, tmp_path_factory):
    """A real Redis Sentinel watching the private redis-server as master "realtime"."""
    master_port = redis_server.port
    port = free_port()
    config = tmp_path_factory.mktemp("sentinel") / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor realtime 127.0.0.1 {master_port} 1\n"
    )
    process = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, 10)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_broadcasts_travel_through_a_sentinel_managed_redis(
    start, dev_certs, sentinel, client_tls, server_env
):
    port = free_port()
    sentinel_env = {"REDIS_SENTINELS": sentinel, "REDIS_SENTINEL_MASTER": "realtime"}
    server = start(daphne_tls_args(port, dev_certs), port, **sentinel_env)
    code = "from realtime import broadcast\nbroadcast.send('via sentinel')\n"

    async def scenario():
        async with ws_connect(f"wss://localhost:{port}/ws/", client_tls) as socket_:
            await receive_json(socket_)
            result = await asyncio.to_thread(
                subprocess.run,
                [PYTHON, "manage.py", "shell", "--no-imports", "-c", code],
                cwd=ROOT,
                env={**server_env, **sentinel_env},
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0, result.stderr
            return await receive_json(socket_)

    assert asyncio.run(scenario())["message"] == "via sentinel"
    assert "Channel layer: channels_redis.pubsub.RedisPubSubChannelLayer" in server.log()


# --- Shards: REDIS_URL with several URLs -------------------------------------------------------


@pytest.mark.parametrize("layer", ["pubsub", "core"])
def test_broadcasts_reach_both_workers_through_two_shards(
    layer, start, private_redis, server_env, client_tls
):
    shards = [private_redis(), private_redis()]
    urls = ",".join(shard.url for shard in shards)
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(serve, port, REDIS_URL=urls, REDIS_CHANNEL_LAYER=layer)
    url = f"wss://localhost:{port}/ws/"

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            sockets = await open_spread(url, client_tls, 2, stack)
            while len({worker for _, worker in sockets}) < 2 and len(sockets) < 40:
                sockets += await open_spread(url, client_tls, 1, stack)
            ids = await asyncio.to_thread(
                send_broadcasts, server_env, urls, [f"through two shards ({layer})"]
            )
            received = [await receive_json(s) for s, _ in sockets]
            return {w for _, w in sockets}, ids, received, [shard_use(s, layer) for s in shards]

    workers, ids, received, uses = asyncio.run(scenario())
    assert workers == {"w1", "w2"}
    assert all(m["type"] == "broadcast" and m["id"] == ids[0] for m in received)
    # channels-redis spread the groups and channels over both shards.
    assert all(uses), uses
    assert "redis://" not in server.log()


def shard_use(shard, layer: str) -> int:
    """What the layer keeps on one shard: subscriptions (pubsub) or keys (core)."""
    client = redis.Redis.from_url(shard.url)
    try:
        return len(client.pubsub_channels()) if layer == "pubsub" else client.dbsize()
    finally:
        client.close()
