"""Clients publishing to topics: who may, what the app makes of it, stored once per client id.

A client's `publish` (realtime/websocket/consumer.py) is checked here against the topic's
registration with the user as the database has it now: `authorize` must allow them and the
topic must have a `publish` function, which may change the data or raise `topics.Rejected`.
A stored publish is saved with a receipt (`PublishReceipt`: publisher, topic, client id) in
one transaction, so that the same id sent again (its client lost the answer to a dropped
connection) is answered with the first offset instead of being stored twice; receipts are
kept REALTIME_PUBLISH_ID_TTL seconds. An ephemeral publish is not stored: it goes to the
subscribers of now (realtime.messaging.delivery). How often a publisher may publish to a
topic: PublishRate, over every worker through Redis. docs/topics.md ("Clients publish").
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from realtime.common.rates import TokenBucket
from realtime.conf import conf
from realtime.messaging import streams, topic_rules
from realtime.messaging.layer import group_send
from realtime.messaging.redis_client import async_client
from realtime.models import PublishReceipt, TopicMessage

logger = logging.getLogger("realtime.messaging.client_publish")

RATE_KEY_PREFIX = "realtime:publish-rate:"
REMEMBERED_BUCKETS = 10_000  # without Redis: beyond this, the oldest buckets are forgotten


class PublishRefused(Exception):
    """A publish the server does not send; answered with an `error` of this code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class Publisher:
    """Who publishes: the receipts' key, and who the subscribers are told it is."""

    key: str  # "user:<pk>"; "socket:<id>" for an anonymous client (no id outlives its socket)
    sender: dict[str, Any] | None  # {"id", "username"}; None when anonymous


def publisher_of(user: Any, socket_id: str) -> Publisher:
    if user is not None and user.is_authenticated:
        return Publisher(f"user:{user.pk}", {"id": user.pk, "username": user.get_username()})
    return Publisher(f"socket:{socket_id}", None)


FORBIDDEN = "This socket may not publish to that topic."


def accept(user: Any, topic: str, data: Any, event: str) -> Any:
    """The data to send for a client's publish, as the topic's `publish` function made it.

    Raises PublishRefused: "forbidden" (no pattern, no `publish`, or `authorize` says no, for
    `user` as stored now), "invalid_publish" or "too_large" (what the client sent, and what
    the app returns, must fit as topics.send() data), "rejected" (the app's reason),
    "internal" (the app's function failed, or returned what cannot be sent: logged, its
    error not told).
    """
    found = topic_rules.match(topic)
    if found is None or found[0].publish is None:
        raise PublishRefused("forbidden", FORBIDDEN)
    registration, params = found
    try:
        allowed = registration.authorize(user, **params)
    except Exception:  # noqa: BLE001 - an app's check that fails allows nothing
        logger.exception("authorize() of topic %s failed; refusing a publish", topic)
        allowed = False
    if not allowed:
        raise PublishRefused("forbidden", FORBIDDEN)
    checked(topic, data, event, "invalid_publish")  # what the client sent
    try:
        result = registration.publish(user, data, **params)
    except topic_rules.Rejected as exc:
        raise PublishRefused("rejected", exc.reason) from None
    except Exception:  # noqa: BLE001 - the app's error stays in the log, not on the wire
        logger.exception("publish() of topic %s failed", topic)
        raise PublishRefused("internal", "The server could not handle this publish.") from None
    checked(topic, result, event, "internal")  # what the app made of it
    return result


def checked(topic: str, data: Any, event: str, fault: str) -> None:
    """Raise PublishRefused unless `data` may be sent to `topic`: "too_large", else `fault`
    ("invalid_publish" for what a client sent; "internal", logged, for what the app's
    `publish` returned)."""
    try:
        topic_rules.check(topic, data, event)
    except ValueError as exc:
        if "REALTIME_TOPIC_MAX_DATA" in str(exc):
            raise PublishRefused("too_large", str(exc)) from None
        if fault == "internal":
            logger.error("publish() of topic %s returned data it cannot send: %s", topic, exc)
            raise PublishRefused("internal", "The server could not handle this publish.") from None
        raise PublishRefused(fault, str(exc)) from None


def digest(topic: str, data: Any, event: str) -> str:
    """What a client sent, as a short hash: the same id with other data is not a repeat."""
    text = json.dumps([topic, event, data], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Stored:
    offset: int
    repeated: bool  # the client id was stored before: this is its first offset


def receipts_of(publisher: Publisher, topic: str, client_id: str) -> Any:
    return PublishReceipt.objects.filter(publisher=publisher.key, topic=topic, client_id=client_id)


def repeat_of(publisher: Publisher, topic: str, client_id: str, sent: str) -> Stored | None:
    """The first offset of a client id this publisher stored on `topic` within
    REALTIME_PUBLISH_ID_TTL (None: the id is new; an older receipt is forgotten). `sent`: the
    digest of what the client sent now. Raises PublishRefused "id_reused" or "unavailable"."""
    receipts = receipts_of(publisher, topic, client_id)
    kept_from = timezone.now() - timedelta(seconds=conf.REALTIME_PUBLISH_ID_TTL)
    receipts.filter(created_at__lt=kept_from).delete()
    earlier = receipts.first()
    return None if earlier is None else Stored(first_offset(earlier, sent), repeated=True)


def store_new(
    publisher: Publisher, topic: str, client_id: str, sent: str, data: Any, event: str
) -> Stored:
    """Store and publish a client's message with a receipt for its id; its offset. Raises
    PublishRefused "id_reused" or "unavailable" (stored, not yet published: the client sends
    the same id again later)."""
    origin = {"from": publisher.sender, "id": client_id}
    try:
        with transaction.atomic():  # the message and its receipt, or neither
            message = streams.store(topic, data, event=event, origin=origin)
            receipt = PublishReceipt.objects.create(
                publisher=publisher.key,
                topic=topic,
                client_id=client_id,
                digest=sent,
                message_pk=message.pk,
            )
        # Committed: the commit published it (streams.store), in this thread.
    except IntegrityError:  # the same id at the same moment from another socket
        earlier = receipts_of(publisher, topic, client_id).first()
        if earlier is None:  # and that receipt expired meanwhile
            raise not_yet() from None
        return Stored(first_offset(earlier, sent), repeated=True)
    except DatabaseError as exc:  # stored, but publishing failed: republish_pending will
        logger.warning("A client's message to %s is stored but not published: %s", topic, exc)
        raise not_yet() from None
    offset = TopicMessage.objects.filter(pk=message.pk).values_list("offset", flat=True).first()
    if offset is None:
        raise not_yet()
    PublishReceipt.objects.filter(pk=receipt.pk).update(offset=offset)
    return Stored(offset, repeated=False)


def first_offset(receipt: PublishReceipt, sent: str) -> int:
    if receipt.digest != sent:
        raise PublishRefused(
            "id_reused", "This id was already used for a different message: use a new id."
        )
    if receipt.offset is not None:
        return receipt.offset
    offset = None
    if receipt.message_pk is not None:
        found = TopicMessage.objects.filter(pk=receipt.message_pk).values_list("offset", flat=True)
        offset = found.first()
    if offset is None:
        raise not_yet()
    PublishReceipt.objects.filter(pk=receipt.pk).update(offset=offset)
    return offset


def not_yet() -> PublishRefused:
    return PublishRefused(
        "unavailable", "The message is stored but not published yet: send it again, same id."
    )


def forget_expired_receipts(_: Any = None) -> int:
    """Delete up to streams.SWEEP_BATCH receipts older than REALTIME_PUBLISH_ID_TTL (the
    history sweep runs this until it deletes fewer); returns how many."""
    kept_from = timezone.now() - timedelta(seconds=conf.REALTIME_PUBLISH_ID_TTL)
    expired = PublishReceipt.objects.filter(created_at__lt=kept_from)
    ids = list(expired.values_list("pk", flat=True)[: streams.SWEEP_BATCH])
    return PublishReceipt.objects.filter(pk__in=ids).delete()[0] if ids else 0


async def send_ephemeral(
    topic: str, data: Any, event: str, publisher: Publisher, client_id: str, socket_id: str
) -> None:
    """Hand an ephemeral message to every worker (not back to the socket that sent it)."""
    origin = {"from": publisher.sender, **({"id": client_id} if client_id else {})}
    event_ = streams.ephemeral_event(topic, data, event, origin, skip=socket_id)
    await group_send(streams.TOPICS_GROUP, event_)


class PublishRate:
    """How often a publisher may publish: REALTIME_TOPIC_PUBLISH_RATE a second (after a burst
    of REALTIME_TOPIC_PUBLISH_BURST) to one topic, and REALTIME_PUBLISHER_RATE (after
    REALTIME_PUBLISHER_BURST) over all topics, so that spreading over many topic names gains
    nothing. With Redis each count is shared by every worker (a fixed window of burst / rate
    seconds, so a publisher's sockets on several workers get no more); without it, token
    buckets in this process."""

    def __init__(self) -> None:
        self.client: Any = None
        self.buckets: dict[str, TokenBucket] = {}

    async def allows(self, who: str, topic: str) -> bool:
        limits = [
            (
                f"{who} topic {topic}",
                conf.REALTIME_TOPIC_PUBLISH_RATE,
                conf.REALTIME_TOPIC_PUBLISH_BURST,
            ),
            (f"{who} all", conf.REALTIME_PUBLISHER_RATE, conf.REALTIME_PUBLISHER_BURST),
        ]
        for key, rate, burst in limits:
            if rate > 0 and not await self._take(key, rate, burst):
                return False
        return True

    async def _take(self, key: str, rate: float, burst: int) -> bool:
        if self.client is None:
            self.client = async_client() or False
        if self.client is False:
            return self._bucket(key, rate, burst).take()
        window = burst / rate
        name = f"{RATE_KEY_PREFIX}{int(time.time() // window)}:{key}"
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.incr(name)
                pipe.expire(name, int(window) + 1)
                count, _ = await pipe.execute()
        except (redis.RedisError, OSError):
            return self._bucket(key, rate, burst).take()
        return count <= burst

    def _bucket(self, key: str, rate: float, burst: int) -> TokenBucket:
        bucket = self.buckets.pop(key, None) or TokenBucket(rate, burst)
        self.buckets[key] = bucket  # the most recent last
        while len(self.buckets) > REMEMBERED_BUCKETS:
            del self.buckets[next(iter(self.buckets))]
        return bucket


publish_rate = PublishRate()
