"""The page that connects to /ws/: what it is for, the connection in plain words, the latest
broadcasts, and for a signed-in user their notifications (staff also see who is online)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from realtime import notifications
from realtime.messaging.replay import broadcasts_position, recent_for
from realtime.web.page_topics import ONLINE_TOPIC, is_active_staff, is_signed_in

RECENT_BROADCASTS = 5
RECENT_NOTIFICATIONS = 10


def shown(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages of a user's own topic as the page lists them (page.mjs does the same live)."""
    return [
        {"offset": m["offset"], **notifications.displayed(m["data"], m["published_at"])}
        for m in messages
    ]


def index(request: HttpRequest) -> HttpResponse:
    # Positions before the lists: see broadcasts_position() and notifications.position().
    position = broadcasts_position()
    user_position = notifications.position(request.user)
    context = {
        "ws_path": "/ws/",
        "page_secure": request.is_secure(),
        "broadcasts": recent_for(request.user, RECENT_BROADCASTS),
        "broadcasts_epoch": position["epoch"],
        "broadcasts_offset": position["offset"],
        "notifications": shown(notifications.recent(request.user, RECENT_NOTIFICATIONS)),
        "user_position": user_position,
        "join_topic": ONLINE_TOPIC if is_signed_in(request.user) else "",
        "shows_online": is_active_staff(request.user),
    }
    return render(request, "realtime/index.html", context)
