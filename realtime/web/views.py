"""The page that connects to /ws/: what it is for, the connection in plain words, the latest
broadcasts, and for a signed-in user their notifications (staff also see who is online)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from realtime import notifications
from realtime.messaging import topic_rules
from realtime.messaging.replay import broadcasts_position, recent_for
from realtime.ops import live_stats

RECENT_BROADCASTS = 5
RECENT_NOTIFICATIONS = 10
# Every signed-in page joins it; only staff are told who is there ("Who's online").
ONLINE_TOPIC = "realtime.online"


def is_signed_in(user: Any) -> bool:
    return bool(user.is_authenticated)


def is_active_staff(user: Any) -> bool:
    return bool(user.is_authenticated and user.is_active and user.is_staff)


def register_page_topics() -> None:
    topic_rules.register(ONLINE_TOPIC, authorize=is_signed_in, presence=is_active_staff)
    # The admin's live view (realtime/ops/live_stats.py): who may open its page.
    topic_rules.register(live_stats.TOPIC, authorize=may_watch_live_stats)


def may_watch_live_stats(user: Any) -> bool:
    """As the admin's view permission on broadcasts (view or change)."""
    return is_active_staff(user) and (
        user.has_perm("realtime.view_broadcast") or user.has_perm("realtime.change_broadcast")
    )


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
