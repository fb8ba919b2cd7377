"""Redis clients for what the channel layer does not do (presence), on the layer's own Redis.

Built from the channel layer's host configuration, so a `redis://`/`rediss://` URL and a
Sentinel configuration both work. None when the in-memory layer is in use.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from realtime.conf import channel_layer_config

# Commands outside the layer are short; a dead Redis must not hang an admin page or a worker.
TIMEOUT = 5.0


def redis_hosts() -> list[dict[str, Any]]:
    """Every Redis host (shard) of the default channel layer; [] for the in-memory layer."""
    config = channel_layer_config()
    if not config["BACKEND"].startswith("channels_redis."):
        return []
    return [dict(host) for host in config["CONFIG"]["hosts"]]


def redis_host() -> dict[str, Any] | None:
    """The first Redis host of the channel layer (presence keeps its keys there), or None for
    the in-memory layer."""
    hosts = redis_hosts()
    return hosts[0] if hosts else None


def _client_kwargs(host: dict[str, Any]) -> dict[str, Any]:
    return {**host, "socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT}


@cache
def sync_client() -> redis.Redis | None:
    host = redis_host()
    return None if host is None else sync_client_for(host)


def sync_client_for(host: dict[str, Any]) -> redis.Redis:
    """A client of one host of the layer (a shard, or Sentinel's master)."""
    kwargs = _client_kwargs(host)
    if "sentinels" in kwargs:
        sentinel = redis.sentinel.Sentinel(
            kwargs.pop("sentinels"), **kwargs.pop("sentinel_kwargs", {}) or {}
        )
        return sentinel.master_for(kwargs.pop("master_name"), **kwargs)
    return redis.Redis.from_url(kwargs.pop("address"), **kwargs)


def async_client() -> redis.asyncio.Redis | None:
    """A new asyncio client (bound to the running event loop by its first use)."""
    host = redis_host()
    if host is None:
        return None
    kwargs = _client_kwargs(host)
    if "sentinels" in kwargs:
        sentinel = redis.asyncio.sentinel.Sentinel(
            kwargs.pop("sentinels"), **kwargs.pop("sentinel_kwargs", {}) or {}
        )
        return sentinel.master_for(kwargs.pop("master_name"), **kwargs)
    return redis.asyncio.Redis.from_url(kwargs.pop("address"), **kwargs)
