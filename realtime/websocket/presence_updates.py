"""A client's `presence_update`: the meta of its user on a presence topic it is subscribed to.

Rights are those of the subscription as it stands: a topic the user may no longer follow was
detached when its rights were read again (realtime.messaging.rechecks), so it is not found
here. Anonymous sockets are not counted in presence, so they may not set a meta. Every update
spends the socket's REALTIME_WS_RATE like any message; the worker then writes at most one per
user and topic each REALTIME_PRESENCE_UPDATE_INTERVAL (realtime.messaging.topic_presence).
"""

from __future__ import annotations

import json
from typing import Any

from realtime import wire
from realtime.conf import conf
from realtime.messaging import topic_rules
from realtime.messaging.delivery import Subscription
from realtime.messaging.fanout import fanout
from realtime.messaging.streams import MAX_DATA_DEPTH, check_text, depth_of, strings_in


class Refused(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def check_meta(meta: Any) -> None:
    """Raise Refused unless `meta` is a JSON object of at most REALTIME_PRESENCE_META_MAX bytes
    (compact JSON) that a database could store too (no NUL, no unpaired surrogate)."""
    if not isinstance(meta, dict):
        raise Refused("invalid_presence_update", '"meta" must be a JSON object.')
    if depth_of(meta) > MAX_DATA_DEPTH:
        detail = f'"meta" may nest at most {MAX_DATA_DEPTH} levels deep.'
        raise Refused("invalid_presence_update", detail)
    try:
        for string in strings_in(meta):
            check_text(string, '"meta"')
        text = json.dumps(meta, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except ValueError as exc:  # NaN or Infinity too
        raise Refused("invalid_presence_update", str(exc)) from None
    size, most = len(text.encode()), conf.REALTIME_PRESENCE_META_MAX
    if size > most:
        detail = f'"meta" is {size} bytes as JSON; at most {most} (REALTIME_PRESENCE_META_MAX).'
        raise Refused("too_large", detail)


def counted_subscription(consumer: Any, topic: str) -> Subscription:
    """The socket's subscription to presence topic `topic` that counts its user, or Refused."""
    # Stream names of the server's own ("$...") are no topic a client subscribed to.
    found = None if topic.startswith("$") else fanout.streams.subscription(consumer, topic)
    if found is None:
        raise Refused("not_subscribed", "Subscribe to the topic first.")
    if not topic_rules.is_presence_topic(topic) or found.member is None:
        detail = "Only signed-in subscribers of a presence topic may set their meta."
        raise Refused("forbidden", detail)
    return found


async def handle(consumer: Any, message: dict[str, Any]) -> None:
    topic = message["topic"]
    try:
        subscription = counted_subscription(consumer, topic)
        check_meta(message.get("meta"))
    except Refused as refused:
        text = wire.presence_update_error(refused.code, topic, refused.detail)
        await consumer.send(text_data=text)
        return
    fanout.presence.update(subscription, message["meta"])
