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
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from realtime import presence, protocol
from realtime.conf import conf
from realtime.delivery import CATCH_UP_DELAY, group_for
from realtime.layer import send_to_group
from realtime.models import Broadcast
from realtime.redis_client import redis_host

logger = logging.getLogger("realtime.broadcast")

# How much earlier than the last broadcast a client saw another one may have been published
# and still not have reached it: two processes publishing at once, or a broadcast Redis lost
# on its way to the client's worker, which delivers it only after delivery.CATCH_UP_DELAY.
REPLAY_SLACK = 2 * CATCH_UP_DELAY


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

    Publishing first claims the broadcast (published_at from NULL to now) so that the sender
    and the workers' republisher never both publish it; a failure releases the claim.
    """
    now = timezone.now()
    claimed = Broadcast.objects.filter(pk=broadcast.pk, published_at__isnull=True)
    if not claimed.update(published_at=now):
        return True  # somebody else published it
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
        return False
    broadcast.published_at, broadcast.recipients = now, recipients
    Broadcast.objects.filter(pk=broadcast.pk).update(recipients=recipients)
    return True


def republish_pending(grace: float = 5.0) -> int:
    """Publish what is stored but unpublished (the channel layer failed), oldest first.

    Only broadcasts older than `grace` seconds, so that the sender's own publish after commit
    goes first, and younger than the resume window (older ones a client cannot resume anyway).
    Returns how many were published; stops at the first failure (the layer is still down).
    """
    now = timezone.now()
    pending = Broadcast.objects.filter(
        published_at__isnull=True,
        sent_at__lte=now - timedelta(seconds=grace),
        sent_at__gte=now - timedelta(seconds=conf.REALTIME_RESUME_MAX_AGE),
    ).order_by("id")
    published = 0
    for broadcast in pending[:100]:
        if not publish(broadcast):
            break
        published += 1
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


@dataclass
class Replay:
    """What a resuming client missed: the broadcasts' texts in id order, or why it cannot."""

    texts: list[str]
    latest: int
    failure: str | None = None


def missed_since(after: int, audiences: list[str]) -> Replay:
    """The broadcasts of `audiences` a client that last saw broadcast `after` may have missed.

    That is every one with a larger id, and also those published no earlier than
    REPLAY_SLACK before `after` was: broadcasts reach clients in the order they are published,
    which is id order except when one is republished after a channel layer failure, when
    two processes publish at the same moment, or when Redis lost it on its way to the
    client's worker (the worker's catch-up delivers it later, but only to sockets that were
    connected when it was published). Unpublished ones are included too (stored
    first, published after). The client de-duplicates by id, so overlap costs nothing.

    The window is REALTIME_RESUME_MAX_COUNT broadcasts and REALTIME_RESUME_MAX_AGE seconds;
    a gap beyond it is a failure ("too_many" or "too_old") and the client should reload.
    """
    latest = Broadcast.objects.order_by("-id").values_list("id", flat=True).first() or 0
    if after > latest:
        return Replay([], latest, "unknown_id")
    maybe_missed = Q(id__gt=after) | Q(published_at__isnull=True)
    seen_published_at = (
        Broadcast.objects.filter(pk=after).values_list("published_at", flat=True).first()
    )
    if seen_published_at is not None:
        maybe_missed |= Q(published_at__gte=seen_published_at - REPLAY_SLACK)
    limit = conf.REALTIME_RESUME_MAX_COUNT
    candidates = Broadcast.objects.filter(maybe_missed, audience__in=audiences).exclude(pk=after)
    missed = list(candidates.order_by("id")[: limit + 1])
    if len(missed) > limit:
        return Replay([], latest, "too_many")
    oldest_allowed = timezone.now() - timedelta(seconds=conf.REALTIME_RESUME_MAX_AGE)
    if any(b.id > after and b.sent_at < oldest_allowed for b in missed):
        return Replay([], latest, "too_old")
    return Replay([protocol.encode(b.as_message()) for b in missed], latest)


def recent_for(user: Any, limit: int = 5) -> list[Broadcast]:
    """The latest broadcasts a user may see, newest first (for the page on load)."""
    return list(Broadcast.objects.filter(audience__in=audiences_for(user))[:limit])


def latest_id_for(user: Any) -> int:
    """The id of the newest broadcast a user may see, 0 if none: where its page resumes from."""
    visible = Broadcast.objects.filter(audience__in=audiences_for(user))
    return visible.order_by("-id").values_list("id", flat=True).first() or 0
