"""Re-authorising a signed-in user's topic subscriptions and presence, when their access changed.

A `recheck` event (realtime.messaging.topic_rules) names a user: each of their sockets on this
worker has its app topics checked again, and those no longer allowed end with `unsubscribed`;
a topic whose `presence` function no longer lets them see presence stays subscribed but tells
them no more `join` or `leave`. Subscriptions a signed stream name let in were the view's
decision, which only the view can take again: they end with reason `stream_expired`, and the
page renders that part again through its view (realtime.messaging.signed_streams). A sign-out
checks the same way before it closes a socket (realtime.messaging.sign_outs).
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async

from realtime import wire
from realtime.messaging import signed_streams, topic_rules
from realtime.messaging.delivery import Streams, spawn

# The fan-out's log, as operators know it (docs/reliability.md), whichever part of it writes.
logger = logging.getLogger("realtime.messaging.fanout")


class Rechecks:
    """Checks the subscriptions of a user's sockets on this worker again."""

    def __init__(self, streams: Streams, signed_in: dict[str, set[Any]]) -> None:
        self.streams = streams
        self.signed_in = signed_in  # "user:<pk>" -> its signed-in consumers (sign_outs)

    def recheck(self, user_pk: str) -> int:
        """Check the topic subscriptions of a user's sockets again; end those no longer
        allowed. Returns how many sockets are checked."""
        consumers = list(self.signed_in.get(f"user:{user_pk}", ()))
        for consumer in consumers:
            spawn(self._recheck(consumer))
        return len(consumers)

    async def _recheck(self, consumer: Any) -> None:
        user = await database_sync_to_async(current_user)(consumer)
        subscribed = app_topics(self.streams, consumer, signed=False)
        forbidden = await database_sync_to_async(forbidden_topics)(user, subscribed)
        for topic in forbidden:
            await self._end(consumer, topic, "forbidden")
        for topic in app_topics(self.streams, consumer, signed=True, authorized=False):
            await self._end(consumer, topic, signed_streams.Verdict.EXPIRED.value)
        await self._recheck_presence(consumer, user, [t for t in subscribed if t not in forbidden])

    async def _end(self, consumer: Any, topic: str, reason: str) -> None:
        if self.streams.subscription(consumer, topic) is not None:
            self.streams.detach(consumer, topic)
            await consumer.send(text_data=wire.unsubscribed(topic, reason))

    async def _recheck_presence(self, consumer: Any, user: Any, names: list[str]) -> None:
        """A subscriber whose topic's `presence` function no longer allows it stays subscribed
        (and counted) but hears no more `join` or `leave`."""
        watching = [
            name
            for name in names
            if topic_rules.presence_needs_database(name)
            and getattr(self.streams.subscription(consumer, name), "presence", False)
        ]
        if not watching:
            return
        hidden = await database_sync_to_async(no_longer_seeing)(user, watching)
        for name in hidden:
            subscription = self.streams.subscription(consumer, name)
            if subscription is not None:
                subscription.presence = False


def app_topics(
    streams: Streams, consumer: Any, *, signed: bool, authorized: bool = True
) -> list[str]:
    """The app topics a socket subscribes to, as its client names them: with those a signed
    stream name let in (`signed`), and with those the topic's authorize let in
    (`authorized`)."""
    return [
        s.wire
        for s in streams.subscriptions_of(consumer)
        if not s.name.startswith("$") and (signed if s.signed else authorized)
    ]


def current_user(consumer: Any, signed_out: bool = False) -> Any:
    """The socket's user as stored now: anonymous once signed out, deleted or deactivated."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import AnonymousUser

    user = consumer.scope.get("user")
    if user is None or not user.is_authenticated or signed_out:
        return AnonymousUser()
    fresh = get_user_model()._default_manager.filter(pk=user.pk, is_active=True).first()
    return fresh or AnonymousUser()


def forbidden_topics(user: Any, names: list[str]) -> list[str]:
    """The topics of `names` that `user` may no longer subscribe to."""
    forbidden = []
    for name in names:
        try:
            allowed = topic_rules.allowed(user, name)
        except Exception:  # noqa: BLE001 - an app's check that fails allows nothing
            logger.exception("authorize() of topic %s failed; ending the subscription", name)
            allowed = False
        if not allowed:
            forbidden.append(name)
    return forbidden


def no_longer_seeing(user: Any, names: list[str]) -> list[str]:
    """The presence topics of `names` whose `presence` function no longer allows `user`."""
    return [name for name in names if not topic_rules.sees_presence(user, name)]
