"""This worker's fan-out: every stream's messages reach the worker once, then each of its sockets.

Each worker process listens on the channel layer once, through one channel of its own
(realtime.messaging.layer_link), instead of every socket joining groups: a message of any
stream arrives once per worker and is written to each socket subscribed here
(realtime.messaging.delivery), its frame built once (realtime/server/frames.py: a SharedFrame,
deflated once for the sockets that negotiated permessage-deflate) and written straight to each
daphne WebSocket, without a consumer task per socket. Sign-outs (realtime.messaging.sign_outs)
and access changes (realtime.messaging.rechecks) come the same way. What the layer did not
bring is read from the database (catch_up). How it stays subscribed and catches up:
docs/reliability.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.utils import timezone

from realtime import wire
from realtime.conf import conf
from realtime.messaging import streams as stored
from realtime.messaging import topic_rules
from realtime.messaging.delivery import Frame, Streams, Subscription, spawn
from realtime.messaging.layer_link import PROBE, LayerLink
from realtime.messaging.rechecks import Rechecks
from realtime.messaging.sign_outs import SignOuts
from realtime.messaging.topic_presence import CHANGED, Presence
from realtime.ops import metrics
from realtime.server.frames import EXTENSION as FRAMES_EXTENSION
from realtime.server.prometheus import child
from realtime.websocket.sessions import LOGOUT, SignedIn

SETTLE = timedelta(seconds=3)  # live delivery normally takes milliseconds; under load, ~1 s
MAINTENANCE_INTERVAL = 2.0  # seconds between catch-ups (realtime.messaging.maintenance)
# How far before the last catch-up's end the next one looks again: a message is stamped when
# its publisher's transaction starts, and may commit a little later, on another host's clock.
OVERLAP = timedelta(seconds=30)
PAUSED_REASON = "The server lost its channel layer"  # in the status message to open sockets


class Recipient:
    """One socket of this worker, as the fan-out sees it."""

    __slots__ = ("consumer", "frames", "socket_id")

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        # realtime.server.frames.WebSocketFrames under RealtimeServer, else None.
        self.frames = consumer.scope.get("extensions", {}).get(FRAMES_EXTENSION)
        self.socket_id = getattr(consumer, "socket_id", "")

    def push(self, frame: Frame) -> None:
        """Write one message to this socket (called in the event loop's thread)."""
        if self.frames is None:
            spawn(self.consumer.send(text_data=frame.text))
        else:
            self.frames.send_prepared(frame.prepared_by(self.frames))

    def push_unless_behind(self, frame: Frame) -> bool:
        """Write a message that may be lost (an ephemeral one) unless more than
        REALTIME_EPHEMERAL_BACKLOG bytes wait to be sent to this socket; whether it was."""
        if self.frames is not None and self.frames.unsent() > conf.REALTIME_EPHEMERAL_BACKLOG:
            return False
        self.push(frame)
        return True


# What a socket's welcome tells of the streams it was subscribed to as it opened.
Positions = dict[str, dict[str, Any] | None]


class Fanout:
    """This worker's single member of every audience group."""

    def __init__(self) -> None:
        self.sockets: dict[Any, Recipient] = {}
        self.streams = Streams()
        self.presence = Presence()
        self.presence.subscriptions = self.streams.subscribers
        self.streams.on_detach = self.presence.leave
        self.sign_outs = SignOuts(self.streams, self.unregister)
        self.rechecks = Rechecks(self.streams, self.sign_outs.signed_in)
        self.link = LayerLink(self, alongside=self.sign_outs.end_sessions_forever)
        self.caught_up_until: datetime | None = None

    # --- Sockets -------------------------------------------------------------------------

    async def register(
        self,
        consumer: Any,
        audiences: list[str],
        connected_at: datetime,
        signed_in: SignedIn | None = None,
    ) -> Positions:
        """Start delivering broadcasts of `audiences` to a consumer's socket, and, when a user
        is signed in on it, its user's topic and the sign-out of its session or user
        (realtime.websocket.sessions). Returns where those streams stood, for the welcome.

        Raises LayerLost while the fan-out cannot hear the layer, TimeoutError when the groups
        cannot be joined in time.
        """
        await self.link.ready()
        broadcasts = await self.streams.open(stored.BROADCASTS)
        user = None
        if signed_in is not None:
            user = await self.streams.open(stored.user_stream(signed_in.user))
        self.link.raise_if_lost()  # lost while this waited: its signed-in sockets are closed
        self.sockets[consumer] = Recipient(consumer)
        positions: Positions = {
            "broadcasts": self._attach(broadcasts, consumer, "", frozenset(audiences)),
            "user_topic": None if user is None else self._attach(user, consumer, topic_rules.USER),
        }
        if signed_in is not None:
            self.sign_outs.add(consumer, signed_in, connected_at)
        return positions

    def _attach(
        self, stream: Any, consumer: Any, wire: str, audiences: Any = None
    ) -> dict[str, Any]:
        recipient = self.sockets[consumer]
        subscription = self.streams.attach(stream, consumer, recipient, wire, audiences)
        return {"epoch": stream.epoch, "offset": subscription.position}

    async def subscribe(self, consumer: Any, name: str, wire: str) -> tuple[str, Subscription]:
        """Subscribe a registered socket to a stream, holding its live messages until
        release(); returns the stream's epoch and the subscription."""
        stream = await self.streams.open(name)
        subscription = self.streams.subscription(consumer, name)
        if subscription is None:
            subscription = self.streams.attach(stream, consumer, self.sockets[consumer], wire)
        subscription.hold()
        return stream.epoch, subscription

    def unregister(self, consumer: Any) -> None:
        self.sockets.pop(consumer, None)
        self.streams.detach_all(consumer)
        self.sign_outs.forget(consumer)

    # --- Events of the layer -------------------------------------------------------------

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == stored.TOPIC_EVENT:
            self.streams.receive(event)
        elif kind == stored.EPHEMERAL_EVENT:
            self.streams.receive_ephemeral(event)
        elif kind == LOGOUT:
            self.sign_outs.sign_out(event["signed_in"])
        elif kind == CHANGED:
            self.presence.changed(event["topic"])
        elif kind == topic_rules.RECHECK:
            self.rechecks.recheck(event["user"])
        elif kind == PROBE:
            self.link.probe_returned(event)

    def layer_lost(self) -> int:
        """Close the signed-in sockets, whose sign-outs could no longer reach them, and tell
        the others that live updates paused. Returns how many were closed."""
        closed = self.sign_outs.close_signed_in()
        self.tell_everyone(wire.status(live=False, reason=PAUSED_REASON))
        return closed

    def layer_regained(self) -> None:
        self.tell_everyone(wire.status(live=True))

    def tell_everyone(self, text: str) -> None:
        """Write one message to every socket of this worker (each once, whatever its
        audiences)."""
        frame = Frame(text)
        recipients = list(self.sockets.values())
        for recipient in recipients:
            recipient.push(frame)
        child(metrics.MESSAGES, "out", wire.type_of(text)).inc(len(recipients))

    def problem(self) -> str | None:
        """Why this worker's fan-out cannot deliver now (for /healthz), or None."""
        return self.link.problem()

    # --- Catch-up ------------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Fill the streams whose database offset is past what this worker delivered, from
        messages published since the last catch-up (and OVERLAP before). Returns how many."""
        if not self.streams.streams:
            return 0
        until = timezone.now() - SETTLE
        since = (self.caught_up_until or until - OVERLAP) - OVERLAP
        last = await database_sync_to_async(stored.last_offsets_published)(since, until)
        self.caught_up_until = until
        return self.streams.behind(last)


fanout = Fanout()
