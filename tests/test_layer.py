"""realtime.messaging.layer against a real Redis that restarts: the first send after it
goes out."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from realtime.messaging.layer import group_send

LAYERS = [RedisPubSubChannelLayer, RedisChannelLayer]


@pytest.mark.parametrize("layer_class", LAYERS, ids=["pubsub", "core"])
def test_a_send_right_after_a_redis_restart_goes_out(layer_class, private_redis):
    server = private_redis()

    async def scenario():
        layer = layer_class(hosts=[{"address": server.url, "socket_timeout": None}])
        await layer.group_send("realtime.test", {"type": "warm.up"})  # a pooled connection
        server.stop()
        server.start()
        # The pooled connection is dead: the layer's own group_send fails once...
        with pytest.raises(redis.ConnectionError):
            await layer.group_send("realtime.test", {"type": "stale"})
        await layer.group_send("realtime.test", {"type": "warm.up"})
        server.stop()
        server.start()
        # ...and realtime.messaging.layer's goes out.
        await group_send("realtime.test", {"type": "after.restart"}, layer)
        await layer.flush()

    asyncio.run(scenario())


def test_a_send_while_redis_is_down_fails_fast(private_redis):
    server = private_redis()
    url = server.url
    server.stop()

    async def scenario():
        layer = RedisPubSubChannelLayer(hosts=[{"address": url, "socket_timeout": None}])
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            await group_send("realtime.test", {"type": "nobody"}, layer)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 5
