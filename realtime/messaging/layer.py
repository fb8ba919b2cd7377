"""Sending an event to a channel layer group, past the dead connections of a Redis restart.

A Redis that restarted leaves the layer's pooled connections dead, and each fails once when
next used ("Connection closed by server"): a broadcast or a sign-out sent then would fail
although Redis is back. A connection error is therefore tried again at once, a few times; a
Redis that is down still fails fast.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

ATTEMPTS = 3
T = TypeVar("T")


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
    layer = layer or get_channel_layer()
    await retrying(lambda: layer.group_send(group, event))


def send_to_group(group: str, event: dict[str, Any]) -> None:
    """group_send() from sync code (a view, a signal receiver, a command)."""
    async_to_sync(group_send)(group, event)
