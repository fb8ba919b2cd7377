"""The example chat's server side: what a room page renders before its socket opens.

A room is the topic `chat.<room>` (project/demo/topics.py). The page lists the room's latest
messages and the position they end at (the topic's epoch and last offset); its script
subscribes with `since` that position, so whatever was sent after the render is replayed
once and nothing before it comes again (docs/chat.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from realtime.messaging import streams
from realtime.models import Topic, TopicMessage

HISTORY_SHOWN = 50  # at most the topic's history (REALTIME_TOPIC_HISTORY_SIZE, 100)
MAX_ROOM_NAME = 50
SUGGESTED_ROOMS = ("lobby", "random")


def topic_of(room: str) -> str:
    return f"chat.{room}"


@dataclass
class History:
    epoch: str
    offset: int
    messages: list[dict[str, Any]] = field(default_factory=list)


def history(room: str, limit: int = HISTORY_SHOWN) -> History:
    """The room's latest `limit` messages, oldest first, and the position they end at.

    The position is read first and only messages up to it are listed: one published in
    between is after the position, so the socket replays it (listed, it would come twice)."""
    topic = topic_of(room)
    # Offsets are given in the transaction that raises the topic's last offset, so every
    # message up to `last` is committed once `last` is read.
    epoch, last = streams.position(topic)
    rows = list(
        TopicMessage.objects.filter(topic=topic, offset__isnull=False, offset__lte=last)
        .order_by("-offset")
        .values_list("frame", "published_at")[:limit]
    )
    return History(epoch, last, [shown(json.loads(f), at) for f, at in reversed(rows)])


def shown(message: dict[str, Any], published_at: datetime | None) -> dict[str, Any]:
    """A message as the room lists it (chat.mjs renders a live one the same way)."""
    data, sender = message.get("data"), message.get("from")
    text = data.get("text") if isinstance(data, dict) else data
    return {
        "offset": message.get("offset"),
        "id": message.get("id") or "",
        "author": sender["username"] if isinstance(sender, dict) else "",
        "author_id": sender["id"] if isinstance(sender, dict) else None,
        "text": text if isinstance(text, str) else json.dumps(data),
        "sent_at": published_at,
    }


def rooms_for(user: Any, may_chat: Any) -> list[str]:
    """The rooms to offer `user`: the suggested ones and those with messages, that they may
    read."""
    names = set(SUGGESTED_ROOMS)
    names |= {
        name.removeprefix("chat.")
        for name in Topic.objects.filter(name__startswith="chat.")
        .order_by("name")
        .values_list("name", flat=True)[:100]
    }
    return sorted(name for name in names if may_chat(user, name))
