"""Topics from app code, views, signals, tasks and the shell: the public API (docs/topics.md).

    from realtime import topics

    @topics.register("orders.<int:order_id>")
    def can_follow_order(user, order_id):
        return Order.objects.filter(pk=order_id, customer=user).exists()

    topics.send("orders.42", {"status": "shipped"}, event="status")
    topics.send_to_user(user, {"text": "Your export is ready"})
    topics.presence("documents.intro")  # [{"id": 1, "username": "alice"}, ...]

Messages are stored and published after the transaction commits, each with the topic's next
offset; a subscriber that reconnects resumes from its offset and gets each message once.
"""

from __future__ import annotations

from realtime.messaging.topic_presence import presence
from realtime.messaging.topic_rules import recheck, register, send, send_to_user

__all__ = ["presence", "recheck", "register", "send", "send_to_user"]
