"""Sending broadcasts: the one path used by the admin, the `broadcast` command and app code.

    from realtime import broadcast
    broadcast.send("Deploy at 18:00", level="warning", audience="authenticated")

`send()` stores the broadcast, then, once the transaction commits, publishes it: serialized
once, handed to the channel layer once per audience group (one Redis PUBLISH on the pub/sub
layer, whatever the number of workers and sockets), forwarded as is by every consumer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from realtime import presence, protocol
from realtime.models import Broadcast
from realtime.redis_client import redis_host

logger = logging.getLogger("realtime.broadcast")


class LayerUnavailable(Exception):
    """The channel layer cannot carry a broadcast to the server processes."""


def group_for(audience: str) -> str:
    return f"realtime.audience.{audience}"


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
    """Hand a stored broadcast to the channel layer. False, logged, when it cannot."""
    text = protocol.encode(broadcast.as_message())  # once for every socket
    event = {"type": "realtime.send", "text": text}
    try:
        recipients = presence.counts()[broadcast.audience]
        async_to_sync(get_channel_layer().group_send)(group_for(broadcast.audience), event)
    except (redis.RedisError, OSError) as exc:
        logger.error("Broadcast #%s is stored but could not be published: %s", broadcast.pk, exc)
        return False
    broadcast.published_at = timezone.now()
    broadcast.recipients = recipients
    Broadcast.objects.filter(pk=broadcast.pk).update(
        published_at=broadcast.published_at, recipients=recipients
    )
    return True


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


@dataclass
class Replay:
    """What a resuming client missed: the broadcasts' texts in id order, or why it cannot."""

    texts: list[str]
    latest: int
    failure: str | None = None


def missed_since(after: int, audiences: list[str]) -> Replay:
    """The broadcasts of `audiences` with ids above `after`, within the resume window.

    The window is REALTIME_RESUME_MAX_COUNT broadcasts and REALTIME_RESUME_MAX_AGE seconds;
    a gap beyond it is a failure ("too_many" or "too_old") and the client should reload.
    """
    latest = Broadcast.objects.order_by("-id").values_list("id", flat=True).first() or 0
    if after > latest:
        return Replay([], latest, "unknown_id")
    limit = settings.REALTIME_RESUME_MAX_COUNT
    missed = list(
        Broadcast.objects.filter(id__gt=after, audience__in=audiences).order_by("id")[: limit + 1]
    )
    if len(missed) > limit:
        return Replay([], latest, "too_many")
    oldest_allowed = timezone.now() - timedelta(seconds=settings.REALTIME_RESUME_MAX_AGE)
    if missed and missed[0].sent_at < oldest_allowed:
        return Replay([], latest, "too_old")
    return Replay([protocol.encode(b.as_message()) for b in missed], latest)


def recent_for(user: Any, limit: int = 5) -> list[Broadcast]:
    """The latest broadcasts a user may see, newest first (for the page on load)."""
    return list(Broadcast.objects.filter(audience__in=audiences_for(user))[:limit])


def latest_id_for(user: Any) -> int:
    """The id of the newest broadcast a user may see, 0 if none: where its page resumes from."""
    visible = Broadcast.objects.filter(audience__in=audiences_for(user))
    return visible.order_by("-id").values_list("id", flat=True).first() or 0
