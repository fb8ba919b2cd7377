"""Topics from app code, views, signals, tasks and the shell: the public API (docs/topics.md).

    from realtime import topics

    @topics.register("orders.<int:order_id>")
    def can_follow_order(user, order_id):
        return Order.objects.filter(pk=order_id, customer=user).exists()

    def chat_message(user, data, room):  # what a client's publish becomes; in a thread
        if not isinstance(data, dict) or not str(data.get("text", "")).strip():
            raise topics.Rejected("A message needs some text.")
        return {"text": str(data["text"])[:2000]}

    topics.register("chat.<slug:room>", authorize=may_read, publish=chat_message)

    topics.send("orders.42", {"status": "shipped"}, event="status")
    topics.send("chat.lobby", {"typing": True}, ephemeral=True)  # now, to whoever is there
    topics.send_to_user(user, {"text": "Your export is ready"})
    topics.history("chat.lobby")  # its latest messages, and the position they end at
    topics.presence("documents.intro")  # [{"id": 1, "username": "alice", "meta": {}}, ...]

Messages are stored and published after the transaction commits, each with the topic's next
offset; a subscriber that reconnects resumes from its offset and gets each message once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from realtime.messaging import streams, topic_rules
from realtime.messaging.fanout import fanout
from realtime.messaging.redis_client import sync_client
from realtime.messaging.topic_presence import KEY_PREFIX, META_PREFIX, users_of
from realtime.messaging.topic_rules import Rejected, recheck, register, send, send_to_user

__all__ = [
    "History",
    "Rejected",
    "history",
    "names",
    "presence",
    "recheck",
    "register",
    "send",
    "send_to_user",
]


@dataclass
class History:
    """A topic's latest messages, oldest first, each as its subscribers received it (a
    `message` object) plus `published_at`; and the position they end at. A page renders the
    messages and has its socket subscribe with `since` {"epoch": epoch, "offset": offset}:
    what was sent after the render comes once, nothing before it again."""

    epoch: str
    offset: int
    messages: list[dict[str, Any]] = field(default_factory=list)


def history(topic: str, limit: int = 50) -> History:
    """The latest `limit` messages of `topic` (at most its history, REALTIME_TOPIC_HISTORY_SIZE)
    and the position they end at. Reads only; checks no rights: the caller's view decides."""
    epoch, offset, rows = streams.latest(topic, limit)
    messages = [{**json.loads(frame), "published_at": at} for frame, at in rows]
    return History(epoch, offset, messages)


def names(prefix: str, limit: int = 100) -> list[str]:
    """Topic names starting with `prefix` that have had a message, in order (the first
    `limit`): the rooms of a chat, say. Checks no rights."""
    return streams.names_starting(prefix, limit)


def presence(topic: str) -> list[dict[str, Any]]:
    """Who is connected to presence topic `topic` now, over every worker: each user once, as
    {"id": ..., "username": ..., "meta": {...}} (the meta its sockets set last, {} if none);
    without Redis, this process's own. Raises ValueError for a topic that is not a presence
    one."""
    if not topic_rules.is_presence_topic(topic):
        raise ValueError(f"{topic!r} is not a registered presence topic (presence=True)")
    client = sync_client()
    if client is None:
        return list(fanout.presence.local_users(topic).values())
    with client.pipeline(transaction=True) as pipe:
        pipe.zrangebyscore(KEY_PREFIX + topic, time.time(), "+inf")
        pipe.hgetall(META_PREFIX + topic)
        members, metas = pipe.execute()
    return list(users_of(members, metas).values())
