"""Replaying broadcasts: what a resuming client missed, and what a page shows on load."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from realtime.broadcasting.fanout import CATCH_UP_DELAY
from realtime.broadcasting.sending import audiences_for
from realtime.conf import conf
from realtime.models import Broadcast
from realtime.websocket import protocol

# How much earlier than the last broadcast a client saw another one may have been published
# and still not have reached it: two processes publishing at once, or a broadcast Redis lost
# on its way to the client's worker, which delivers it only after fanout.CATCH_UP_DELAY.
REPLAY_SLACK = 2 * CATCH_UP_DELAY


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
