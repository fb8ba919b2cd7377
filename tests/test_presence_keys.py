"""The audience counts (realtime.messaging.audience_counts) against topic presence entries
(realtime.messaging.topic_presence), on a real Redis: any signed-in user can create topic
presence keys, and no number of them changes what reading the counts asks of Redis."""

from __future__ import annotations

import json

import pytest

from realtime.messaging import audience_counts, topic_presence
from realtime.messaging.redis_client import sync_client

TOPIC_KEYS = 5000


@pytest.fixture
def redis_layer(settings, redis_server):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_server.url, "socket_timeout": None}]},
        }
    }
    sync_client.cache_clear()
    sync_client().flushdb()
    yield sync_client()
    sync_client().close()
    sync_client.cache_clear()


def worker_counts(client, field: str, counts: dict[str, int]) -> None:
    """A worker's counts, as its refresher stores them."""
    client.hset(audience_counts.COUNTS_KEY, field, audience_counts.entry(counts))


def add_topic_presence(client, count: int) -> None:
    """`count` presence topics with one user each, as topic_presence stores them."""
    user = {"id": 7, "username": "mallory"}
    with client.pipeline(transaction=False) as pipe:
        for n in range(count):
            key = f"{topic_presence.KEY_PREFIX}documents.d{n}"
            pipe.zadd(key, {topic_presence.member("w", user): 2e9})
        pipe.execute()


def commands_of_counts(client) -> tuple[dict[str, int], dict[str, int]]:
    """The counts, and how many of each Redis command reading them took."""
    client.config_resetstat()
    counts = audience_counts.counts()
    stats = client.info("commandstats")
    used = {
        name.removeprefix("cmdstat_"): value["calls"]
        for name, value in stats.items()
        if not name.startswith(("cmdstat_config", "cmdstat_info"))  # the measuring's own
    }
    return counts, used


def test_topic_presence_keys_do_not_change_what_reading_the_audience_counts_touches(
    redis_layer,
):
    worker_counts(redis_layer, "host-a:1", {"everyone": 2, "authenticated": 1})
    worker_counts(redis_layer, "host-b:2", {"everyone": 1, "staff": 1})
    before = commands_of_counts(redis_layer)
    add_topic_presence(redis_layer, TOPIC_KEYS)
    # A key an earlier version's worker left: not read, and it expires on its own.
    redis_layer.set("realtime:presence:old-host:1", json.dumps({"everyone": 50}), ex=15)
    after = commands_of_counts(redis_layer)
    assert before[0] == after[0] == {"everyone": 3, "authenticated": 1, "staff": 1}
    assert before[1] == after[1]  # the same commands, however many topic keys there are
    assert after[1] == {"hgetall": 1}  # before: a SCAN per 1,000 keys, then MGET of them all
    assert redis_layer.dbsize() == TOPIC_KEYS + 2  # the topics', the old one, the counts' hash
