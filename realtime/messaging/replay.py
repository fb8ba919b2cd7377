"""What a page shows on load: the latest broadcasts, and where its socket resumes from."""

from __future__ import annotations

from typing import Any

from realtime.messaging import streams
from realtime.messaging.sending import audiences_for
from realtime.models import Broadcast


def recent_for(user: Any, limit: int = 5) -> list[Broadcast]:
    """The latest broadcasts a user may see, newest first (for the page on load)."""
    return list(Broadcast.objects.filter(audience__in=audiences_for(user))[:limit])


def broadcasts_position() -> dict[str, Any]:
    """The broadcast stream's epoch and offset now: a page read before its list of broadcasts
    resumes from here, so nothing published in between is missed (a broadcast both listed and
    replayed is shown once: the page keys them by id)."""
    epoch, offset = streams.position(streams.BROADCASTS)
    return {"epoch": epoch, "offset": offset}
