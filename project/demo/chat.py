"""The example chat's server side: what a room page renders before its socket opens.

A room is the topic `chat.<room>` (project/demo/topics.py). The page lists the room's latest
messages and the position they end at (the topic's epoch and last offset); its script
subscribes with `since` that position, so whatever was sent after the render is replayed
once and nothing before it comes again (docs/chat.md).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from realtime import topics

HISTORY_SHOWN = 50  # at most the topic's history (REALTIME_TOPIC_HISTORY_SIZE, 100)
MAX_ROOM_NAME = 50
SUGGESTED_ROOMS = ("lobby", "random")


def topic_of(room: str) -> str:
    return f"chat.{room}"


def history(room: str, limit: int = HISTORY_SHOWN) -> topics.History:
    """The room's latest `limit` messages, oldest first, as the room lists them, and the
    position they end at (the page's socket subscribes from there)."""
    found = topics.history(topic_of(room), limit)
    found.messages = [shown(message, message["published_at"]) for message in found.messages]
    return found


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
    names |= {name.removeprefix("chat.") for name in topics.names("chat.")}
    return sorted(name for name in names if may_chat(user, name))
