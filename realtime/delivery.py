"""Catch-up: broadcasts that were published while this worker could not hear Redis.

Redis pub/sub delivers at most once, to the subscribers connected at that moment. When Redis
restarts, each worker resubscribes on its own (redis-py), but whatever was published in
between never reaches it, and its clients are still connected, so they do not resume.

So each worker remembers which broadcasts reached it through the channel layer, and every
few seconds asks the database for broadcasts published (a little while ago, so live delivery
has had its chance) to an audience it has sockets in, that it never received. It delivers
those itself to its sockets that were already connected when the broadcast was published.
Clients de-duplicate by id, so a late copy is harmless; a missing one is not.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.utils import timezone

from realtime import protocol
from realtime.models import Broadcast

logger = logging.getLogger("realtime.delivery")

SETTLE = timedelta(seconds=3)  # live delivery normally takes milliseconds; under load, ~1 s
LOOK_BACK = timedelta(minutes=5)
REMEMBERED = 10_000


class Recipient(Protocol):
    connected_at: datetime

    async def send(self, text_data: str) -> None: ...


received: OrderedDict[int, None] = OrderedDict()
local: dict[str, set[Any]] = {}


def register(consumer: Recipient, audiences: list[str]) -> None:
    for audience in audiences:
        local.setdefault(audience, set()).add(consumer)


def unregister(consumer: Recipient, audiences: list[str]) -> None:
    for audience in audiences:
        local.get(audience, set()).discard(consumer)


def mark_received(broadcast_id: int) -> None:
    """Called for every broadcast event a consumer of this worker handles (hot path: O(1))."""
    if broadcast_id not in received:
        received[broadcast_id] = None
        if len(received) > REMEMBERED:
            received.popitem(last=False)


def never_received(now: datetime) -> list[Broadcast]:
    audiences = [audience for audience, consumers in local.items() if consumers]
    if not audiences:
        return []
    published = Broadcast.objects.filter(
        published_at__gte=now - LOOK_BACK,
        published_at__lte=now - SETTLE,
        audience__in=audiences,
    ).order_by("id")
    return [b for b in published if b.id not in received]


async def catch_up() -> int:
    """Deliver what this worker missed to its sockets that were connected back then."""
    missed = await sync_to_async(never_received)(timezone.now())
    for broadcast in missed:
        text = protocol.encode(broadcast.as_message())
        recipients = [
            consumer
            for consumer in list(local.get(broadcast.audience, ()))
            if consumer.connected_at <= broadcast.published_at
        ]
        for consumer in recipients:
            await consumer.send(text_data=text)
        mark_received(broadcast.id)
        logger.warning(
            "Broadcast #%s never reached this worker through the channel layer; delivered it "
            "to %d socket(s) from the database",
            broadcast.id,
            len(recipients),
        )
    return len(missed)


async def maintain() -> None:
    """The periodic work of a worker on the Redis layer: republish, then catch up."""
    from realtime.broadcast import republish_pending

    await sync_to_async(republish_pending)()
    await catch_up()
