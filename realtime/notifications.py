"""Notifications: a short text for one user, on every open socket of theirs, on every worker.

The page's "Notifications" panel shows them; `manage.py notify USERNAME "text"`, the admin's
"Send a notification" action on users and app code send them:

    from realtime import notifications
    notifications.notify(user, "Your export is ready", level="success")

A notification is a `message` on the user's own topic ("user" on the wire) with event
"notification" and data {"text", "level", "sent_at"}: stored, published after the transaction
commits, and kept in that topic's history (REALTIME_TOPIC_HISTORY_SIZE / _TTL), so a page that
loads shows the latest ones and a socket that reconnects gets the ones it missed, once.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from realtime.messaging import streams, topic_rules
from realtime.models import Broadcast, TopicMessage

EVENT = "notification"
MAX_LENGTH = 500
LEVELS = tuple(Broadcast.Level.values)


def notify(user: Any, text: str, *, level: str = "info") -> TopicMessage:
    """Send `text` to every open socket of `user` (a user or a primary key) once the
    transaction commits. Raises ValueError for empty or too long text or an unknown level."""
    text = str(text).strip()
    if not text:
        raise ValueError("A notification needs some text.")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"A notification is at most {MAX_LENGTH} characters; this is {len(text)}.")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}.")
    data = {"text": text, "level": level, "sent_at": timezone.now().isoformat()}
    return topic_rules.send_to_user(user, data, event=EVENT)


def recent(user: Any, limit: int = 10) -> list[dict[str, Any]]:
    """The latest published messages of `user`'s own topic still in its history, newest
    first, each as {"offset", "event", "data", "published_at"}; [] for an anonymous user."""
    if not getattr(user, "is_authenticated", False):
        return []
    name = streams.user_stream(user.pk)
    oldest = timezone.now() - timedelta(seconds=streams.window_for(name).seconds)
    rows = (
        TopicMessage.objects.filter(topic=name, offset__isnull=False, published_at__gte=oldest)
        .order_by("-offset")
        .values("offset", "event", "data", "published_at")[:limit]
    )
    return list(rows)


def displayed(data: Any, published_at: datetime | None = None) -> dict[str, Any]:
    """What the page shows of a message's data: {"text", "level", "level_label", "sent_at"}.
    A notification's own fields; a string as it is; other JSON as JSON (app messages), with
    the time it was published (a live one shows when it arrived: about the same)."""
    if isinstance(data, dict) and isinstance(data.get("text"), str):
        text, level, sent_at = data["text"], data.get("level"), data.get("sent_at")
    else:
        text = data if isinstance(data, str) else json.dumps(data)
        level, sent_at = "info", None
    level = level if level in LEVELS else "info"
    return {
        "text": text,
        "level": level,
        "level_label": Broadcast.Level(level).label,
        "sent_at": _parsed_time(sent_at) or published_at,
    }


def _parsed_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def position(user: Any) -> dict[str, Any] | None:
    """Where `user`'s own topic stands now ({"epoch", "offset"}), read before `recent()` so a
    page resumes its socket from there and misses nothing; None for an anonymous user."""
    if not getattr(user, "is_authenticated", False):
        return None
    epoch, offset = streams.position(streams.user_stream(user.pk))
    return {"epoch": epoch, "offset": offset}
