"""Sending broadcasts: the one path used by the admin, the `broadcast` command and app code
(through the public realtime.broadcast).

`send()` stores the broadcast and its message on the broadcast stream; once the transaction
commits, the stream publishes it with its offset (realtime.messaging.streams): serialized
once, one event on the channel layer whatever the number of workers and sockets, and written
by every worker to each of its sockets in the broadcast's audience.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.core.exceptions import ValidationError
from django.db import transaction

from realtime.messaging import audience_counts, streams
from realtime.messaging.redis_client import redis_host
from realtime.models import Broadcast

logger = logging.getLogger("realtime.broadcast")


class LayerUnavailable(Exception):
    """The channel layer cannot carry a broadcast to the server processes."""


def audiences_for(user: Any) -> list[str]:
    """Every audience a user belongs to: staff are signed in, and everyone is everyone."""
    audiences = [Broadcast.Audience.EVERYONE.value]
    if user is not None and user.is_authenticated:
        audiences.append(Broadcast.Audience.AUTHENTICATED.value)
        if user.is_staff:
            audiences.append(Broadcast.Audience.STAFF.value)
    return audiences


def send(
    message: str,
    *,
    level: str = Broadcast.Level.INFO,
    audience: str = Broadcast.Audience.EVERYONE,
    sender: Any = None,
) -> Broadcast:
    """Store a broadcast and publish it to its audience on every worker after commit.

    Raises django.core.exceptions.ValidationError for an empty or too long message or an
    unknown level or audience.
    """
    return send_broadcast(
        Broadcast(message=message, level=level, audience=audience, sent_by=sender)
    )


def send_broadcast(broadcast: Broadcast) -> Broadcast:
    """Validate, store and (after commit) publish an unsaved Broadcast."""
    broadcast.full_clean()
    try:
        streams.check_text(broadcast.message, "The message")
    except ValueError as exc:
        raise ValidationError({"message": [str(exc)]}) from None
    with transaction.atomic():  # one commit for both rows (outside a caller's transaction)
        broadcast.save()
        streams.store(
            streams.BROADCASTS,
            broadcast.as_message(),  # serialized once, with its offset, when published
            event="broadcast",
            audience=broadcast.audience,
            broadcast=broadcast,
        )
    # Outside a transaction it is published by now: the caller sees when, and to how many.
    broadcast.refresh_from_db(fields=["published_at", "recipients"])
    return broadcast


def check_layer_reaches_other_processes() -> None:
    """Raise LayerUnavailable unless a broadcast from this process can reach the servers."""
    if redis_host() is None:
        raise LayerUnavailable(
            "The channel layer is the in-memory one, which only works inside one process, so "
            "a broadcast from here cannot reach the server processes. Set REDIS_URL (your own "
            "project: CHANNEL_LAYERS to a Redis layer), the same as the servers', and try again."
        )
    try:
        audience_counts.counts()
    except (redis.RedisError, OSError) as exc:
        raise LayerUnavailable(f"Cannot reach Redis (REDIS_URL): {exc}") from None
