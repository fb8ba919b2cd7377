"""Sending broadcasts: the one path used by the admin, the `broadcast` command and app code
(through the public realtime.broadcast).

`send()` stores the broadcast, then, once the transaction commits, publishes it: serialized
once, handed to the channel layer once per audience group (one Redis PUBLISH on the pub/sub
layer, whatever the number of workers and sockets), forwarded as is by every consumer.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from typing import Any

import redis
from django.db import transaction
from django.utils import timezone

from realtime.broadcasting import presence
from realtime.broadcasting.fanout import group_for
from realtime.broadcasting.layer import send_to_group
from realtime.broadcasting.redis_client import redis_host
from realtime.conf import conf
from realtime.models import Broadcast
from realtime.websocket import protocol

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
    broadcast.save()
    transaction.on_commit(partial(publish, broadcast))
    return broadcast


def publish(broadcast: Broadcast) -> bool:
    """Hand a stored broadcast to the channel layer, once. False, logged, when it cannot.

    Publishing first claims the broadcast (published_at from NULL to now, one UPDATE: on
    PostgreSQL the row lock makes one claimant win) so that the sender and every process's
    republisher never both publish it; a failure releases the claim.
    """
    return _publish(broadcast) != FAILED


PUBLISHED, TAKEN, FAILED = "published", "taken", "failed"


def _publish(broadcast: Broadcast) -> str:
    """PUBLISHED by this call, TAKEN (another process claimed it first), or FAILED."""
    now = timezone.now()
    claimed = Broadcast.objects.filter(pk=broadcast.pk, published_at__isnull=True)
    if not claimed.update(published_at=now):
        return TAKEN
    text = protocol.encode(broadcast.as_message())  # once for every socket
    event = {
        "type": "realtime.send",
        "text": text,
        "id": broadcast.pk,
        "audience": broadcast.audience,
    }
    try:
        recipients = presence.counts()[broadcast.audience]
        send_to_group(group_for(broadcast.audience), event)
    except (redis.RedisError, OSError) as exc:
        Broadcast.objects.filter(pk=broadcast.pk).update(published_at=None)
        logger.error(
            "Broadcast #%s is stored but could not be published (it will be republished when "
            "the channel layer is back): %s",
            broadcast.pk,
            exc,
        )
        return FAILED
    broadcast.published_at, broadcast.recipients = now, recipients
    Broadcast.objects.filter(pk=broadcast.pk).update(recipients=recipients)
    return PUBLISHED


def republish_pending(grace: float = 5.0) -> int:
    """Publish what is stored but unpublished (the channel layer failed), oldest first.

    Only broadcasts older than `grace` seconds, so that the sender's own publish after commit
    goes first, and younger than the resume window (older ones a client cannot resume anyway).
    Returns how many this call published (another process may claim some first); stops at the
    first failure (the layer is still down).
    """
    now = timezone.now()
    pending = Broadcast.objects.filter(
        published_at__isnull=True,
        sent_at__lte=now - timedelta(seconds=grace),
        sent_at__gte=now - timedelta(seconds=conf.REALTIME_RESUME_MAX_AGE),
    ).order_by("id")
    published = 0
    for broadcast in pending[:100]:
        outcome = _publish(broadcast)
        if outcome == FAILED:
            break
        published += outcome == PUBLISHED
    if published:
        logger.info("Republished %d broadcast(s) stored while the channel layer failed", published)
    return published


def check_layer_reaches_other_processes() -> None:
    """Raise LayerUnavailable unless a broadcast from this process can reach the servers."""
    if redis_host() is None:
        raise LayerUnavailable(
            "The channel layer is the in-memory one, which only works inside one process, so "
            "a broadcast from here cannot reach the server processes. Set REDIS_URL (the same "
            "as the servers') and try again."
        )
    try:
        presence.counts()
    except (redis.RedisError, OSError) as exc:
        raise LayerUnavailable(f"Cannot reach Redis (REDIS_URL): {exc}") from None
