"""Streams: the stored, ordered messages of topics, users and broadcasts, by position.

A stream is a named sequence of messages. `store()` saves a message in the sender's
transaction; once that commits, `publish()` gives it the stream's next offset (in a short
transaction of its own that locks the stream's `Topic` row, so offsets follow commit order
with no gap), builds its frame once, and hands it to the channel layer's topics group, which
every worker joins. A worker delivers a stream's messages to its sockets in offset order, and
fills any gap it sees from here (realtime.messaging.delivery), so a message Redis loses
costs latency, not the message. Names starting with "$" are the app's own streams: the
broadcasts, and each user's topic.

Why the database and not Redis Streams: docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import redis
from django.db import transaction
from django.db.models import F, Max, Q, QuerySet
from django.utils import timezone

from realtime import wire
from realtime.conf import conf
from realtime.messaging import audience_counts
from realtime.messaging.layer import send_to_group
from realtime.models import Broadcast, Topic, TopicMessage

logger = logging.getLogger("realtime.messaging.streams")

TOPICS_GROUP = "realtime.topics"  # every worker's fan-out is a member: a name on the wire
TOPIC_EVENT = "realtime.topic"
EPHEMERAL_EVENT = "realtime.ephemeral"  # live to the subscribers of now: not stored
BROADCASTS = "$broadcasts"
PUBLISHED, TAKEN, FAILED = "published", "taken", "failed"
# Messages past a stream's window are deleted every this many offsets (a resume checks the
# window itself, so a few kept longer are never replayed): a busy stream stays near its window
# between sweeps. The history sweep (realtime.messaging.maintenance) bounds every stream,
# whether or not it publishes again.
PRUNE_EVERY = 16
MAX_DATA_DEPTH = 64  # lists and objects in a message's data


def user_stream(pk: Any) -> str:
    """The stream of a user's own topic ("user" on the wire, for that user's sockets only)."""
    return f"$user.{pk}"


@dataclass(frozen=True)
class Entry:
    """One published message as a worker delivers it."""

    offset: int
    frame: str
    audience: str = ""
    published: float = 0.0  # its publish's unix time when it came live; 0: read from the database


@dataclass(frozen=True)
class Window:
    """How far back a stream's history reaches for a resume: messages and seconds."""

    count: int
    seconds: float


def window_for(name: str) -> Window:
    if name == BROADCASTS:
        return Window(conf.REALTIME_RESUME_MAX_COUNT, conf.REALTIME_RESUME_MAX_AGE)
    return Window(conf.REALTIME_TOPIC_HISTORY_SIZE, conf.REALTIME_TOPIC_HISTORY_TTL)


# --- Sending ---------------------------------------------------------------------------------


def store(name: str, data: Any, *, event: str = "message", **fields: Any) -> TopicMessage:
    """Save a message to stream `name` and publish it once the transaction commits."""
    message = TopicMessage.objects.create(topic=name, event=event, data=data, **fields)
    transaction.on_commit(partial(publish, message.pk))
    return message


def check_data(data: Any) -> None:
    """Raise ValueError unless `data` is JSON that fits REALTIME_TOPIC_MAX_DATA bytes, and that
    PostgreSQL can store (no NUL character, no unpaired surrogate)."""
    if depth_of(data) > MAX_DATA_DEPTH:
        raise ValueError(f"Topic data may nest at most {MAX_DATA_DEPTH} levels deep.")
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        size = len(text.encode())
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError too: an unpaired surrogate
        raise ValueError(f"Topic data must be JSON-serialisable text: {exc}") from None
    for string in strings_in(data):
        check_text(string, "Topic data")
    if size > conf.REALTIME_TOPIC_MAX_DATA:
        raise ValueError(
            f"Topic data is {size} bytes as JSON; at most {conf.REALTIME_TOPIC_MAX_DATA} "
            f"(REALTIME_TOPIC_MAX_DATA) may be sent."
        )


def depth_of(value: Any) -> int:
    """How deep lists and objects nest in a JSON value, without recursion (a deep one would
    exhaust Python's stack: a 500 instead of an answer)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, depth)
            if depth > MAX_DATA_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            todo.extend((child, depth + 1) for child in children)
    return deepest


def strings_in(value: Any) -> Iterator[str]:
    """Every string of a JSON value, its objects' keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings_in(item)


def check_text(text: str, what: str) -> None:
    """Raise ValueError for text a database cannot store: NUL characters or unpaired surrogates."""
    if "\x00" in text:
        raise ValueError(f"{what} may not contain NUL characters (\\u0000).")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (an unpaired surrogate).") from None


def frame_for(message: TopicMessage, offset: int) -> str:
    """The text every subscriber receives for this message."""
    if message.topic == BROADCASTS:
        return wire.encode({**message.data, "offset": offset})
    fields = {"offset": offset, **(message.origin or {})}
    return topic_frame(message.topic, message.data, message.event, fields)


def topic_frame(name: str, data: Any, event: str, fields: dict[str, Any]) -> str:
    """A `message` of stream `name` as its subscribers receive it, with `fields` after the
    data: its offset, or `ephemeral`; who published it and its client id, for a client's."""
    topic = "user" if name.startswith("$user.") else name
    return wire.encode({"type": "message", "topic": topic, "event": event, "data": data, **fields})


def ephemeral_event(
    name: str, data: Any, event: str, origin: dict[str, Any] | None = None, skip: str = ""
) -> dict[str, Any]:
    """The channel layer event of an ephemeral message: every worker writes it to its
    subscribers of stream `name` now (but the socket `skip`, which sent it), or drops it."""
    fields = {"ephemeral": True, **(origin or {})}
    return {
        "type": EPHEMERAL_EVENT,
        "topic": name,
        "text": topic_frame(name, data, event, fields),
        "skip": skip,
    }


def publish(pk: int) -> str:
    """Give a stored message its offset and hand it to every worker, once.

    PUBLISHED by this call, TAKEN when another process published it first. Once the offset is
    committed the message is published whatever Redis does: a worker that never hears of it
    fetches it when it sees the gap, or at its next catch-up.
    """
    with transaction.atomic():
        now = timezone.now()
        if not TopicMessage.objects.filter(pk=pk, published_at__isnull=True).update(
            published_at=now
        ):
            return TAKEN
        message = TopicMessage.objects.get(pk=pk)
        offset = _next_offset(message.topic)
        message.frame, message.offset = frame_for(message, offset), offset
        message.save(update_fields=["frame", "offset"])
        if offset % PRUNE_EVERY == 0:
            _forget_beyond_window(message.topic, offset, now)
    try:
        send_to_group(TOPICS_GROUP, live_event(message))
    except (redis.RedisError, OSError) as exc:
        logger.warning(
            "Message %s of %s is stored but did not reach the channel layer (%s); workers "
            "deliver it from the database at their next catch-up",
            offset,
            message.topic,
            exc,
        )
    if message.broadcast_id is not None:  # after the send: it waits for nothing of this
        _record_broadcast(message, now)
    return PUBLISHED


def initial_epoch(name: str) -> str:
    """A stream's epoch until its history is reset: known before its row exists, so that
    subscribing to a topic no message was sent to yet writes nothing (a client could otherwise
    make rows by subscribing to names its pattern allows)."""
    return hashlib.sha256(f"realtime.topic:{name}".encode()).hexdigest()[:16]


def _next_offset(name: str) -> int:
    """The stream's next offset; the UPDATE locks its row until the transaction commits."""
    stream = Topic.objects.filter(name=name)
    if not stream.update(last_offset=F("last_offset") + 1):  # its first message
        Topic.objects.get_or_create(name=name, defaults={"epoch": initial_epoch(name)})
        stream.update(last_offset=F("last_offset") + 1)
    return stream.values_list("last_offset", flat=True).get()


def _forget_beyond_window(name: str, offset: int, now: datetime) -> None:
    window = window_for(name)
    TopicMessage.objects.filter(topic=name, offset__lte=offset - window.count).delete()
    TopicMessage.objects.filter(
        topic=name, published_at__lt=now - timedelta(seconds=window.seconds)
    ).delete()


def _record_broadcast(message: TopicMessage, when: datetime) -> None:
    """The admin's "Published at" and "Recipients" (its audience's sockets at that moment)."""
    try:
        recipients = audience_counts.counts()[message.audience]
    except (redis.RedisError, OSError):
        recipients = None
    Broadcast.objects.filter(pk=message.broadcast_id).update(
        published_at=when, recipients=recipients
    )


def live_event(message: TopicMessage) -> dict[str, Any]:
    return {
        "type": TOPIC_EVENT,
        "topic": message.topic,
        "offset": message.offset,
        "text": message.frame,
        "audience": message.audience,
        "published": time.time(),  # for the delivery latency (realtime/ops/metrics.py)
    }


def republish_pending(grace: float = 5.0) -> int:
    """Publish what was stored but never published (the sending process died, or its database
    failed after the commit), oldest first; returns how many this call published."""
    now = timezone.now()
    pending = TopicMessage.objects.filter(
        published_at__isnull=True, sent_at__lte=now - timedelta(seconds=grace)
    ).order_by("id")
    published = sum(publish(pk) == PUBLISHED for pk in pending.values_list("pk", flat=True)[:100])
    if published:
        logger.info("Published %d stored message(s) that had not been published", published)
    return published


# --- Forgetting: the history sweep (realtime.messaging.maintenance runs it) -----------------

# Rows one statement of the sweep deletes at most. bench/history_sweep.py (100,000 rows in 1,000
# topics, a 2-core machine shared with other runs): a statement took a median of 4-14 ms and at
# most 84 ms, on SQLite and PostgreSQL alike, so the worker's one database thread, which
# handshakes and /healthz share, is never held for long. 500 ids also stay far under SQLite's
# bound on query parameters (999 before SQLite 3.32).
SWEEP_BATCH = 500
STREAMS_PER_TRIM = 100  # streams whose beyond-the-window rows one trim_some() deletes


def expired(now: datetime) -> list[QuerySet[TopicMessage]]:
    """The published messages older than their stream's window allows (builds, reads nothing):
    the broadcasts' by REALTIME_RESUME_MAX_AGE, the others' by REALTIME_TOPIC_HISTORY_TTL."""
    broadcasts_from = now - timedelta(seconds=conf.REALTIME_RESUME_MAX_AGE)
    others_from = now - timedelta(seconds=conf.REALTIME_TOPIC_HISTORY_TTL)
    return [
        TopicMessage.objects.filter(topic=BROADCASTS, published_at__lt=broadcasts_from),
        TopicMessage.objects.filter(published_at__lt=others_from).exclude(topic=BROADCASTS),
    ]


def published_since(since: datetime) -> list[str]:
    """The streams that published a message since `since` (by the published_at index)."""
    found = TopicMessage.objects.filter(published_at__gte=since).values_list("topic", flat=True)
    # DISTINCT in the database: one row per stream, not one per message, reaches Python.
    return sorted(found.order_by().distinct())


def trim_some(names: list[str]) -> int:
    """Delete up to SWEEP_BATCH messages of streams `names` that are beyond the newest
    window.count of their stream (as publish() does every PRUNE_EVERY offsets); how many."""
    beyond = Q()
    for name, last in Topic.objects.filter(name__in=names).values_list("name", "last_offset"):
        if last > window_for(name).count:
            beyond |= Q(topic=name, offset__lte=last - window_for(name).count)
    return delete_some(TopicMessage.objects.filter(beyond)) if beyond else 0


def delete_some(rows: QuerySet[TopicMessage]) -> int:
    """Delete up to SWEEP_BATCH of `rows`, in one short statement; returns how many. Nothing
    refers to a TopicMessage, so Django deletes by id without loading the rows."""
    ids = list(rows.values_list("pk", flat=True)[:SWEEP_BATCH])
    return TopicMessage.objects.filter(pk__in=ids).delete()[0] if ids else 0


# --- Reading -------------------------------------------------------------------------------


def position(name: str) -> tuple[str, int]:
    """A stream's epoch and last offset (0 before its first message); reads only."""
    found = Topic.objects.filter(name=name).values_list("epoch", "last_offset").first()
    return found if found is not None else (initial_epoch(name), 0)


def latest(name: str, limit: int) -> tuple[str, int, list[tuple[str, datetime | None]]]:
    """A stream's position and its latest `limit` published messages up to it, oldest first,
    as (frame, published_at). The position is read first, and messages after it are left
    out: a subscriber that starts from this position gets those live or replayed, once."""
    epoch, last = position(name)  # offsets are given as `last` rises: all up to it committed
    rows = (
        TopicMessage.objects.filter(topic=name, offset__isnull=False, offset__lte=last)
        .order_by("-offset")
        .values_list("frame", "published_at")[:limit]
    )
    return epoch, last, list(reversed(rows))


def names_starting(prefix: str, limit: int) -> list[str]:
    """The first `limit` stream names, in order, that start with `prefix` and have had a
    message."""
    found = Topic.objects.filter(name__startswith=prefix).order_by("name")
    return list(found.values_list("name", flat=True)[:limit])


def entries(name: str, after: int, upto: int | None = None) -> list[Entry]:
    """The published messages of a stream with offsets after `after` (up to `upto`), in order."""
    found = TopicMessage.objects.filter(topic=name, offset__gt=after)
    if upto is not None:
        found = found.filter(offset__lte=upto)
    rows = found.order_by("offset").values_list("offset", "frame", "audience")
    return [Entry(*row) for row in rows]


@dataclass
class Replay:
    """What a resuming subscriber missed, or why it cannot be replayed."""

    epoch: str
    entries: list[Entry]
    failure: str | None = None


def replay(name: str, epoch: str, after: int, upto: int) -> Replay:
    """The messages after `after` up to `upto` for a subscriber of epoch `epoch`, or the
    failure: "epoch_changed", "too_many" (the history keeps fewer) or "too_old"."""
    current, last = position(name)
    if epoch != current or after > last:
        return Replay(current, [], "epoch_changed")
    if after >= upto:
        return Replay(current, [])
    window = window_for(name)
    if upto - after > window.count:
        return Replay(current, [], "too_many")
    oldest = timezone.now() - timedelta(seconds=window.seconds)
    found = list(
        TopicMessage.objects.filter(topic=name, offset__gt=after, offset__lte=upto)
        .order_by("offset")
        .values_list("offset", "frame", "audience", "published_at")
    )
    if len(found) < upto - after or any(published < oldest for *_, published in found):
        return Replay(current, [], "too_old")
    if sum(len(frame) for _, frame, *_ in found) > replay_budget():
        return Replay(current, [], "too_many")  # would be dropped as a client that stops reading
    return Replay(current, [Entry(*row[:3]) for row in found])


def replay_budget() -> float:
    """The most bytes one replay may write: half of what a socket may leave unsent
    (REALTIME_WS_MAX_UNSENT_BYTES, realtime/server/unsent.py). More would have the socket
    dropped, and its client resume the same replay again, for ever."""
    cap = conf.REALTIME_WS_MAX_UNSENT_BYTES
    return cap / 2 if cap > 0 else float("inf")


def last_offsets_published(since: datetime, until: datetime) -> dict[str, int]:
    """The largest offset of each stream that published between `since` and `until`."""
    rows = (
        TopicMessage.objects.filter(published_at__gte=since, published_at__lte=until)
        .values("topic")
        .annotate(last=Max("offset"))
        .values_list("topic", "last")
    )
    return dict(rows)
