"""The page's own topics and who may use them: "Who's online" (realtime.online) and the
admin's live view (realtime.stats). Registered before an app's topics.py, which may replace
them (docs/topics.md)."""

from __future__ import annotations

from typing import Any

from realtime.messaging import topic_rules
from realtime.ops import live_stats

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
