"""Delivering streams to this worker's sockets: every message once, in offset order.

A worker keeps, for each stream its sockets subscribe to, the offset it has delivered up to:
the next live message goes to every subscription at once (its frame built once), one ahead of
a gap waits while the gap is read from the database (streams.entries), a copy is dropped. Each
subscription keeps its own position too, so a socket that joined later, or resumed (even past
what this worker delivered), never gets a message twice; while its history is replayed it
"holds" its live messages and writes them after. The guarantees, and why: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from channels.db import database_sync_to_async

from realtime.messaging import streams
from realtime.messaging.streams import Entry
from realtime.ops import live_stats, metrics
from realtime.server.prometheus import child

logger = logging.getLogger("realtime.messaging.delivery")

background: set[asyncio.Task[Any]] = set()


def spawn(coroutine: Any) -> None:
    """Run a coroutine on its own, holding a reference until it ends (asyncio keeps none)."""
    task = asyncio.ensure_future(coroutine)
    background.add(task)
    task.add_done_callback(background.discard)


class Frame:
    """A message's text, and its WebSocket frame built once, on first need, for every socket."""

    __slots__ = ("text", "_prepared")

    def __init__(self, text: str) -> None:
        self.text = text
        self._prepared: Any = None

    def prepared_by(self, frames: Any) -> Any:
        if self._prepared is None:
            self._prepared = frames.prepare(self.text)
        return self._prepared


class Subscription:
    """One socket's subscription to one stream on this worker."""

    __slots__ = (
        "recipient",
        "name",
        "wire",
        "audiences",
        "position",
        "covered_from",
        "held",
        "member",
        "presence",
        "signed",
    )

    def __init__(self, recipient: Any, name: str, wire: str, audiences: Any, position: int):
        self.recipient = recipient  # has push(Frame)
        self.name = name  # the stream
        self.wire = wire  # the topic as the client names it ("" for the broadcasts)
        self.audiences = audiences  # the broadcasts: the socket's audiences; else None
        self.position = position  # the last offset this socket was given (or skipped)
        self.covered_from = position  # everything after this up to `position` was given
        self.held: list[tuple[int, Frame]] | None = None  # (offset, or 0 for no message)
        self.member: str | None = None  # a presence topic: the user it counts, if signed in
        self.presence = False  # a presence topic: it was told who is there, and hears changes
        self.signed = False  # let in by a signed stream name, not by the topic's authorize

    def offer(self, offset: int, audience: str, frame: Frame) -> bool:
        """Give the socket this message if it is new to it and for it; whether it was."""
        if offset <= self.position:
            return False
        self.position = offset
        if self.audiences is not None and audience not in self.audiences:
            return False
        self.tell(frame, offset)
        return True

    def tell(self, frame: Frame, offset: int = 0) -> None:
        """Write a frame now, or after the held ones (`offset`: the stream message it is)."""
        if self.held is not None:
            self.held.append((offset, frame))
        else:
            self.recipient.push(frame)

    def skip_through(self, offset: int) -> None:
        """The socket already has every message up to `offset`: none of them goes again."""
        self.position = max(self.position, offset)
        if self.held:
            self.held = [(o, frame) for o, frame in self.held if not 0 < o <= offset]

    def hold(self) -> None:
        if self.held is None:
            self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for _, frame in held:
            self.recipient.push(frame)

    def wants(self, entry: Entry) -> bool:
        return self.audiences is None or entry.audience in self.audiences


class Stream:
    """One stream as this worker delivers it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch = ""
        self.delivered: int | None = None  # None until its position is read
        self.subscriptions: dict[Any, Subscription] = {}
        self.pending: dict[int, Entry] = {}  # arrived ahead of a gap, or while loading
        self.busy = False  # a fill is running
        self.loading: asyncio.Future[None] | None = None


class Streams:
    """This worker's streams, their subscriptions, and the live messages they receive."""

    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self.of: dict[Any, dict[str, Subscription]] = {}  # consumer -> its subscriptions
        self.read_position: Callable[[str], tuple[str, int]] = streams.position
        self.read_entries: Callable[[str, int, int], list[Entry]] = streams.entries
        self.read_replay: Callable[[str, str, int, int], streams.Replay] = streams.replay
        # How the readers run: in Django's database thread, its connections checked (replaced
        # if broken or too old) around each call.
        self.in_thread: Callable[[Callable[..., Any]], Callable[..., Any]] = database_sync_to_async
        self.filled = 0  # messages delivered from the database after a gap (for tests, logs)
        self.on_detach: Callable[[Subscription], None] = lambda subscription: None

    # --- Opening and subscribing -------------------------------------------------------------

    async def open(self, name: str) -> Stream:
        """The stream, its position read from the database on first use."""
        stream = self.streams.get(name)
        if stream is None:
            stream = self.streams[name] = Stream(name)
            stream.loading = asyncio.ensure_future(self._load(stream))
        if stream.delivered is None:
            assert stream.loading is not None
            try:
                await asyncio.shield(stream.loading)
            except BaseException:
                if self.streams.get(name) is stream and not stream.subscriptions:
                    del self.streams[name]
                raise
        return stream

    async def _load(self, stream: Stream) -> None:
        stream.epoch, delivered = await self.in_thread(self.read_position)(stream.name)
        stream.delivered = delivered
        for offset in [o for o in stream.pending if o <= delivered]:
            del stream.pending[offset]
        self._advance(stream)

    def attach(
        self, stream: Stream, consumer: Any, recipient: Any, wire: str, audiences: Any = None
    ) -> Subscription:
        """Subscribe a socket from the stream's delivered offset (call open() first)."""
        assert stream.delivered is not None
        subscription = Subscription(recipient, stream.name, wire, audiences, stream.delivered)
        stream.subscriptions[consumer] = subscription
        self.of.setdefault(consumer, {})[stream.name] = subscription
        return subscription

    def subscription(self, consumer: Any, name: str) -> Subscription | None:
        return self.of.get(consumer, {}).get(name)

    def subscriptions_of(self, consumer: Any) -> Iterable[Subscription]:
        return list(self.of.get(consumer, {}).values())

    def detach(self, consumer: Any, name: str) -> None:
        subscriptions = self.of.get(consumer)
        subscription = None if subscriptions is None else subscriptions.pop(name, None)
        if subscription is None:
            return
        if not subscriptions:
            del self.of[consumer]
        stream = self.streams.get(name)
        if stream is not None:
            stream.subscriptions.pop(consumer, None)
            if not stream.subscriptions and stream.delivered is not None:
                del self.streams[name]
        if subscription.presence or subscription.member is not None:
            self.on_detach(subscription)

    def subscribers(self, name: str) -> Iterable[Subscription]:
        stream = self.streams.get(name)
        return () if stream is None else stream.subscriptions.values()

    def detach_all(self, consumer: Any) -> None:
        for name in list(self.of.get(consumer, {})):
            self.detach(consumer, name)

    async def history(self, subscription: Subscription, epoch: str, after: int) -> streams.Replay:
        """What a subscriber that had everything up to `after` (of `epoch`) missed before its
        subscription began; on success its covered range then starts at `after`, and what it
        already had from another worker that this one delivers later is not sent again."""
        upto = subscription.covered_from
        replay = await self.in_thread(self.read_replay)(subscription.name, epoch, after, upto)
        if replay.failure is None:
            replay.entries = [entry for entry in replay.entries if subscription.wants(entry)]
            subscription.covered_from = min(after, upto)
            subscription.skip_through(after)
        return replay

    # --- Live messages -----------------------------------------------------------------------

    def receive(self, event: dict[str, Any]) -> None:
        """A message from the channel layer."""
        stream = self.streams.get(event["topic"])
        if stream is None:
            return  # nobody here subscribes to it
        offset = event["offset"]
        if stream.delivered is not None and offset <= stream.delivered:
            return  # a copy (a late live message after a fill)
        audience, published = event.get("audience", ""), event.get("published", 0.0)
        stream.pending[offset] = Entry(offset, event["text"], audience, published)
        self._advance(stream)

    def receive_ephemeral(self, event: dict[str, Any]) -> None:
        """An ephemeral message from the channel layer: to this worker's subscribers of its
        stream now, but the socket that sent it; dropped for one that is behind (replaying,
        or more than REALTIME_EPHEMERAL_BACKLOG bytes waiting to be sent)."""
        stream = self.streams.get(event["topic"])
        if stream is None:
            return
        frame, skip = Frame(event["text"]), event.get("skip", "")
        delivered = dropped = 0
        for subscription in list(stream.subscriptions.values()):
            recipient = subscription.recipient
            if skip and getattr(recipient, "socket_id", "") == skip:
                continue
            if subscription.held is None and recipient.push_unless_behind(frame):
                delivered += 1
            else:
                dropped += 1
        child(metrics.EPHEMERAL, "delivered").inc(delivered)
        child(metrics.EPHEMERAL, "dropped").inc(dropped)

    def _advance(self, stream: Stream) -> None:
        """Deliver what is next in order; start a fill when a gap remains."""
        if stream.delivered is None or stream.busy:
            return
        self._deliver_in_order(stream)
        if stream.pending:
            self._start_fill(stream, max(stream.pending))

    def _deliver_in_order(self, stream: Stream) -> None:
        assert stream.delivered is not None
        while stream.delivered + 1 in stream.pending:
            self._deliver(stream, stream.pending.pop(stream.delivered + 1))

    def _deliver(self, stream: Stream, entry: Entry) -> None:
        frame = Frame(entry.frame)
        told = 0
        for subscription in list(stream.subscriptions.values()):
            told += subscription.offer(entry.offset, entry.audience, frame)
        stream.delivered = entry.offset
        count_delivered(stream.name, entry, told)

    def behind(self, last_offsets: dict[str, int]) -> int:
        """Fill every stream whose database offset is past what this worker delivered (the
        catch-up: what Redis lost and no later message revealed). Returns how many fill."""
        filling = 0
        for name, last in last_offsets.items():
            stream = self.streams.get(name)
            if stream is None or stream.delivered is None or stream.busy:
                continue
            if last is not None and last > stream.delivered:
                self._start_fill(stream, last, lost=True)
                filling += 1
        return filling

    def _start_fill(self, stream: Stream, upto: int, lost: bool = False) -> None:
        stream.busy = True
        spawn(self._fill(stream, upto, lost))

    async def _fill(self, stream: Stream, upto: int, lost: bool) -> None:
        """Deliver what the database has between the delivered offset and `upto`. `lost`: the
        catch-up found it (Redis lost it); else a later message arrived first (lost, or only
        overtaken: two processes publish one stream at once)."""
        filled = 0
        try:
            while stream.delivered is not None and upto > stream.delivered:
                found = await self.in_thread(self.read_entries)(stream.name, stream.delivered, upto)
                for entry in found:
                    stream.pending.setdefault(entry.offset, entry)
                self.filled += len(found)
                filled += len(found)
                self._deliver_in_order(stream)
                if stream.delivered < upto:  # the history lacks what it should hold
                    self._skip_to(stream, min([*stream.pending, upto + 1]))
                    self._deliver_in_order(stream)
                upto = max(stream.pending, default=stream.delivered)
        except Exception as exc:  # noqa: BLE001 - the database may be away: the next try fills
            logger.warning("Could not fill a gap in %s from the database: %s", stream.name, exc)
        finally:
            stream.busy = False
        if filled:
            logger.log(
                logging.WARNING if lost else logging.INFO,
                "%d message(s) of %s never reached this worker through the channel layer%s; "
                "delivered them from the database to %d socket(s)",
                filled,
                stream.name,
                "" if lost else " in order",
                len(stream.subscriptions),
            )

    @staticmethod
    def _skip_to(stream: Stream, available: int) -> None:
        """The history lacks what the gap needs (gone past its window): go on from the next
        message there is."""
        assert stream.delivered is not None
        logger.warning(
            "Messages %d to %d of %s are no longer in the history; skipped them",
            stream.delivered + 1,
            available - 1,
            stream.name,
        )
        stream.delivered = available - 1


def kind_of(name: str) -> str:
    """A stream as the metrics label it: "broadcast" or "topic" (a user's topic too)."""
    return "broadcast" if name == streams.BROADCASTS else "topic"


def count_delivered(name: str, entry: Entry, told: int) -> None:
    """Count one message's deliveries on this worker (once per message, not per socket)."""
    kind = kind_of(name)
    child(metrics.DELIVERIES, kind).inc(told)
    child(metrics.MESSAGES, "out", "broadcast" if kind == "broadcast" else "message").inc(told)
    if not told:
        return  # no socket of this worker had it: no latency to speak of
    latency = None
    if entry.published:
        latency = max(0.0, time.time() - entry.published)
        child(metrics.DELIVERY_LATENCY, kind).observe(latency)
    else:
        child(metrics.CATCH_UP_DELIVERIES, kind).inc(told)
    live_stats.recorder.delivered(name, entry.offset, told, latency)


def count_replayed(name: str, count: int) -> None:
    """Count the messages of a resume's replay (their frames are counted as they are sent)."""
    child(metrics.DELIVERIES, kind_of(name)).inc(count)
