"""Sending an event to a channel layer group from sync code (a view, a signal, a command).

A Redis that restarted leaves the layer's pooled connections dead, and each fails once when
next used: a broadcast or a sign-out sent then would fail although Redis is back. A connection
error is therefore tried again at once, a few times; a Redis that is down still fails fast.
"""

from __future__ import annotations

from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

ATTEMPTS = 3


def send_to_group(group: str, event: dict[str, Any]) -> None:
    """group_send(), tried again on a connection error; raises the last error."""
    send = async_to_sync(get_channel_layer().group_send)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            send(group, event)
            return
        except redis.ConnectionError:
            if attempt == ATTEMPTS:
                raise
