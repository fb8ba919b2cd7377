"""Sending an event to a channel layer group, past the dead connections of a Redis restart.

A Redis that restarted leaves the layer's pooled connections dead, and each fails once when
next used ("Connection closed by server"): a broadcast or a sign-out sent then would fail
although Redis is back. A connection error is therefore tried again at once, a few times; a
Redis that is down still fails fast.

channel_layer() is the app's one way to its layer: Channels' default layer, or, in a project
without CHANNEL_LAYERS (where Channels has none), the in-memory layer realtime.conf names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any, TypeVar

import redis
from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, get_channel_layer
from django.utils.module_loading import import_string

from realtime.conf import channel_layer_config

ATTEMPTS = 3
T = TypeVar("T")


def channel_layer() -> BaseChannelLayer:
    """Channels' default layer, else the app's own (one per process, as Channels' are)."""
    return get_channel_layer() or _layer_from_conf()


@cache
def _layer_from_conf() -> BaseChannelLayer:
    config = channel_layer_config()
    return import_string(config["BACKEND"])(**config.get("CONFIG", {}))


async def retrying(operation: Callable[[], Awaitable[T]]) -> T:
    """Await `operation()`, tried again at once on a connection error; raises the last error."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await operation()
        except redis.ConnectionError:
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def group_send(group: str, event: dict[str, Any], layer: Any = None) -> None:
    """The layer's group_send(), tried again on a connection error; raises the last error."""
    layer = layer or channel_layer()
    await retrying(lambda: layer.group_send(group, event))


def send_to_group(group: str, event: dict[str, Any]) -> None:
    """group_send() from sync code (a view, a signal receiver, a command)."""
    async_to_sync(group_send)(group, event)
