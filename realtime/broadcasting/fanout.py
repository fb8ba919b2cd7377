"""Delivering broadcasts to this worker's sockets: the fan-out, and catch-up after losses.

Fan-out. Each worker process joins the topics group once, with one channel of its own, instead
of every socket joining groups. A message of any stream (the broadcasts, a user's topic, an
app's topic: realtime.broadcasting.streams) therefore arrives at a worker once (one Redis
message per worker on the pub/sub layer) and is written to each socket that subscribes to its
stream from here (realtime.broadcasting.delivery): framed once (autobahn's prepared message) and
written straight to each daphne WebSocket, without waking a consumer task per socket. Sockets
served by another ASGI server (no `realtime.websocket` scope extension, e.g. in tests or under
uvicorn) get the text through their consumer's `send()`.

The fan-out stays subscribed for the worker's life (docs/reliability.md): one receive that is
never cancelled (the pub/sub layer deletes a channel whose receive is cancelled), group
memberships renewed by a separate task every REALTIME_FANOUT_REJOIN seconds (the core layer
forgets members after group_expiry), and a check every REALTIME_FANOUT_CHECK seconds that an
event sent to the worker's own probe group comes back. When a check fails the worker has lost
the layer: it says so once, /healthz fails, and its signed-in sockets are closed (1013), since
their sign-outs could no longer reach them.

Sign-outs travel the same way: one `realtime.logout` event per worker (realtime.websocket.sessions),
and the worker ends its sockets of that session, or of that user when an account's access
changed: their topic subscriptions are checked again (those no longer allowed end with
`unsubscribed`), then the sockets close (4001). So a socket needs no channel of its own on the
layer: no Redis subscription per socket, nothing but its client to wait for.

Catch-up. Redis pub/sub delivers at most once, to the subscribers connected at that moment.
A message that does not reach a worker is found when the next one of its stream arrives (a
gap in the offsets), or, every few seconds, by asking the database which streams published
past what this worker delivered; either way the missing messages are read from the database
and delivered in order, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from realtime.broadcasting import streams as stored
from realtime.broadcasting import topics
from realtime.broadcasting.delivery import Frame, Streams, Subscription, spawn
from realtime.broadcasting.topic_presence import CHANGED, Presence
from realtime.common import close_codes
from realtime.conf import conf
from realtime.server import metrics
from realtime.server.frames import EXTENSION as FRAMES_EXTENSION
from realtime.server.metrics import child
from realtime.websocket import protocol
from realtime.websocket.sessions import (
    LOGOUT,
    SESSIONS_GROUP,
    SessionChecks,
    SignedIn,
    session_end,
)

logger = logging.getLogger("realtime.broadcasting.fanout")

SETTLE = timedelta(seconds=3)  # live delivery normally takes milliseconds; under load, ~1 s
MAINTENANCE_INTERVAL = 2.0  # seconds between catch-ups (realtime.broadcasting.maintenance)
# How far before the last catch-up's end the next one looks again: a message is stamped when
# its publisher's transaction starts, and may commit a little later, on another host's clock.
OVERLAP = timedelta(seconds=30)
# A socket registers just after its welcome; a sign-out processed in between would miss it.
# Sign-outs are remembered this long, and a registering socket is closed if its session signed
# out (a signed-out session is gone: any socket that has it read it before), or if its user's
# access changed after the socket connected (one that connected later read the new access).
SIGN_OUT_MEMORY = 30.0
SIGN_OUTS_REMEMBERED = 10_000  # bounded memory, whatever the rate of sign-outs
JOIN_TIMEOUT = 5.0
RETRY_DELAY = 1.0  # seconds between attempts while the channel layer fails
CHECK_ATTEMPTS = 3  # a check's tries in a row when the connection fails
PROBE = "realtime.fanout.probe"
LOST_REASON = "Reconnect: the server lost its channel layer"
PAUSED_REASON = "The server lost its channel layer"  # in the status message to open sockets


def rejoin_interval() -> float:
    """Seconds between renewals of the fan-out's group memberships (REALTIME_FANOUT_REJOIN)."""
    return float(conf.REALTIME_FANOUT_REJOIN)


def check_interval() -> float:
    """Seconds between two checks that the fan-out hears the layer (REALTIME_FANOUT_CHECK)."""
    return float(conf.REALTIME_FANOUT_CHECK)


def session_check_interval() -> float:
    """Seconds at most between two looks at a signed-in socket's session
    (REALTIME_SESSION_CHECK)."""
    return float(conf.REALTIME_SESSION_CHECK)


def check_timeout() -> float:
    """Seconds a check, a join or a new channel may take (REALTIME_FANOUT_CHECK_TIMEOUT)."""
    return float(conf.REALTIME_FANOUT_CHECK_TIMEOUT)


def failure_reason(exc: BaseException) -> str:
    """An exception as one short line, for logs and /healthz (no URL: Redis URLs hold passwords)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"timed out after {check_timeout():g} s"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


class LayerLost(ConnectionError):
    """The fan-out cannot hear the channel layer now: a socket would miss what it is sent."""


class Recipient:
    """One socket of this worker, as the fan-out sees it."""

    __slots__ = ("consumer", "frames")

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        # realtime.server.frames.WebSocketFrames under RealtimeServer, else None.
        self.frames = consumer.scope.get("extensions", {}).get(FRAMES_EXTENSION)

    def push(self, frame: Frame) -> None:
        """Write one message to this socket (called in the event loop's thread)."""
        if self.frames is None:
            spawn(self.consumer.send(text_data=frame.text))
        else:
            self.frames.send_prepared(frame.prepared_by(self.frames))


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
        # "session:<digest>" and "user:<pk>": the signed-in consumers of each, and back.
        self.signed_in: dict[str, set[Any]] = {}
        self.keys_of: dict[Any, tuple[str, ...]] = {}
        # Recent sign-outs and access changes: key -> wall-clock time, oldest first.
        self.recent_sign_outs: OrderedDict[str, float] = OrderedDict()
        self.wall_clock = time.time
        self.caught_up_until: datetime | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.joined: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        # The channel layer as the fan-out hears it: None, or why not and since when.
        self.lost: str | None = None
        self.lost_since = 0.0
        self.probe_group = f"realtime.fanout.probe.{uuid.uuid4().hex}"
        self.probe_token = 0
        self.probe_waiter: asyncio.Future[None] | None = None
        # Open signed-in sockets by when to look at their session again.
        self.session_checks = SessionChecks()

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
        self._ensure_running()
        assert self.joined is not None
        if self.lost is not None:
            raise LayerLost(self.lost)
        if not self.joined.is_set():
            await asyncio.wait_for(asyncio.shield(self.joined.wait()), JOIN_TIMEOUT)
        broadcasts = await self.streams.open(stored.BROADCASTS)
        user = None
        if signed_in is not None:
            user = await self.streams.open(stored.user_stream(signed_in.user))
        if self.lost is not None:  # lost while this waited: its signed-in sockets are closed
            raise LayerLost(self.lost)
        self.sockets[consumer] = Recipient(consumer)
        positions: Positions = {
            "broadcasts": self._attach(broadcasts, consumer, "", frozenset(audiences)),
            "user_topic": None if user is None else self._attach(user, consumer, topics.USER),
        }
        if signed_in is not None:
            self.keys_of[consumer] = keys = signed_in.registry_keys()
            for key in keys:
                self.signed_in.setdefault(key, set()).add(consumer)
            if self._signed_out_since(keys, connected_at.timestamp()):
                self.unregister(consumer)
                spawn(consumer.close(code=close_codes.SIGNED_OUT, reason="Signed out"))
            elif signed_in.key:
                self._look_at_session_by(consumer, signed_in.key, signed_in.ends_at)
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

    # --- Sessions that end -----------------------------------------------------------------

    def _look_at_session_by(self, consumer: Any, key: str, ends_at: float) -> None:
        when = min(ends_at, self.wall_clock() + session_check_interval())
        self.session_checks.look_by(consumer, key, when)

    async def _end_sessions_forever(self) -> None:
        while True:
            await asyncio.sleep(check_interval())
            try:
                await self.end_sessions()
            except Exception:  # noqa: BLE001 - the database may be away; look again later
                logger.exception("Could not look at the sessions of signed-in sockets")

    async def end_sessions(self) -> int:
        """Close (4001) the sockets whose session has ended (expired, or deleted from its
        store without a sign-out); look at the others again by their end. Returns how many
        were closed."""
        now = self.wall_clock()
        due = self.session_checks.take_due(now)
        if not due:
            return 0
        keys = {key for _, key in due}
        ends = await database_sync_to_async(lambda: {key: session_end(key) for key in keys})()
        closed = 0
        for consumer, key in due:
            if consumer not in self.keys_of:
                continue
            ends_at = ends[key]
            if ends_at is None or ends_at <= now:
                self.unregister(consumer)
                spawn(consumer.close(code=close_codes.SIGNED_OUT, reason="Session ended"))
                closed += 1
            else:
                self._look_at_session_by(consumer, key, ends_at)
        return closed

    def unregister(self, consumer: Any) -> None:
        self.sockets.pop(consumer, None)
        self.session_checks.forget(consumer)  # at once: a closed socket is never looked at
        self.streams.detach_all(consumer)
        for key in self.keys_of.pop(consumer, ()):
            self.signed_in[key].discard(consumer)
            if not self.signed_in[key]:
                del self.signed_in[key]

    # --- Receiving -----------------------------------------------------------------------

    def _ensure_running(self) -> None:
        """Start the fan-out in this event loop, or again if it stopped (and said why)."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop or self.task is None or self.task.done():
            self.loop, self.joined = loop, asyncio.Event()
            self.lost, self.probe_waiter = None, None
            self.task = loop.create_task(self._run())
            self.task.add_done_callback(self._stopped)

    async def _run(self) -> None:
        layer = get_channel_layer()
        channel = await self._open_channel(layer)
        receiving = asyncio.ensure_future(self._receive_forever(layer, channel))
        keeping = asyncio.ensure_future(self._keep_joined(layer, channel))
        ending = asyncio.ensure_future(self._end_sessions_forever())
        tasks = {receiving, keeping, ending}
        try:
            # None ends but by a bug: then all stop, and the next socket starts them again.
            done, _ = await asyncio.wait(tasks, return_when=FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()

    def _stopped(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("Broadcast fan-out stopped", exc_info=task.exception())
            self._lose(f"the fan-out stopped: {failure_reason(task.exception())}")

    async def _open_channel(self, layer: Any) -> str:
        while True:
            try:
                opening = layer.new_channel("realtime.fanout.")
                return await asyncio.wait_for(opening, check_timeout())
            except Exception as exc:  # noqa: BLE001 - the layer's errors vary; keep going
                self._lose(failure_reason(exc))
                await asyncio.sleep(RETRY_DELAY)

    async def _receive_forever(self, layer: Any, channel: str) -> None:
        """Hand every event of this worker's channel to handle(), for the worker's life.

        The receive is never timed out: RedisPubSubChannelLayer deletes a channel whose
        receive() is cancelled, after which group_add() on it raises for ever. Its errors (the
        core layer's, while Redis is down) are retried quietly: the checks say when the fan-out
        is deaf, and the core layer keeps an event in Redis until a receive takes it.
        """
        while True:
            try:
                event = await layer.receive(channel)
            except Exception:  # noqa: BLE001 - the layer's errors vary; keep going
                await asyncio.sleep(RETRY_DELAY)
                continue
            try:
                self.handle(event)
            except Exception:  # noqa: BLE001 - one bad event must not deafen the worker
                logger.exception("Broadcast fan-out could not handle an event; dropped it")

    async def _keep_joined(self, layer: Any, channel: str) -> None:
        """Join the groups, then prove every check interval that an event sent to a group
        comes back; rejoin every rejoin interval, and after any failure."""
        rejoin_at = 0.0
        while True:
            now = asyncio.get_running_loop().time()
            rejoin = self.lost is not None or now >= rejoin_at
            failure = await self._check(layer, channel, rejoin)
            if failure is None:
                rejoin_at = now + rejoin_interval() if rejoin else rejoin_at
                self._regain()
            else:
                self._lose(failure)
            await asyncio.sleep(check_interval())

    async def _check(self, layer: Any, channel: str, rejoin: bool) -> str | None:
        """None when the fan-out (re)joined if asked and its probe came back, else why not.

        A connection error is tried again at once: each pooled connection to a Redis that
        restarted fails once, and one stale connection is no outage.
        """
        failure = ""
        for _ in range(CHECK_ATTEMPTS):
            try:
                if rejoin:
                    await asyncio.wait_for(self._join(layer, channel), check_timeout())
                await self._probe(layer)
                return None
            except redis.ConnectionError as exc:
                failure = failure_reason(exc)
            except Exception as exc:  # noqa: BLE001 - the layer's errors vary
                return failure_reason(exc)
        return failure

    async def _join(self, layer: Any, channel: str) -> None:
        # group_add() of a member again only renews it: the core layer's membership (a sorted
        # set scored by join time) expires after group_expiry unless renewed, the pub/sub
        # layer's lasts for the process. Nothing is received by anyone else in between.
        for group in [stored.TOPICS_GROUP, SESSIONS_GROUP, self.probe_group]:
            await layer.group_add(group, channel)
        assert self.joined is not None
        if self.lost is None:
            self.joined.set()

    async def _probe(self, layer: Any) -> None:
        """Send an event to this worker's own group and wait for the receive loop to see it:
        the whole path a broadcast takes (group membership, Redis, this worker's channel)."""
        self.probe_token += 1
        waiter = self.probe_waiter = asyncio.get_running_loop().create_future()
        event = {"type": PROBE, "token": self.probe_token}
        try:
            await asyncio.wait_for(self._send_and_wait(layer, event, waiter), check_timeout())
        except TimeoutError:
            raise TimeoutError(
                f"a check sent through the channel layer did not come back within "
                f"{check_timeout():g} s"
            ) from None

    async def _send_and_wait(self, layer: Any, event: dict[str, Any], waiter: Any) -> None:
        await layer.group_send(self.probe_group, event)
        await waiter

    def _probe_returned(self, event: dict[str, Any]) -> None:
        waiter = self.probe_waiter
        if waiter is not None and not waiter.done() and event.get("token") == self.probe_token:
            waiter.set_result(None)

    # --- Losing the layer ----------------------------------------------------------------

    def _lose(self, reason: str) -> None:
        """The fan-out cannot hear the channel layer: say so once, refuse new sockets until it
        can, and close the signed-in ones, whose sign-outs and access changes it would miss."""
        if self.lost is not None:
            self.lost = reason
            return
        self.lost, self.lost_since = reason, time.monotonic()
        metrics.LAYER_LOSSES.inc()
        if self.joined is not None:
            self.joined.clear()
        closed = self.close_signed_in()
        self.tell_everyone(protocol.status(live=False, reason=PAUSED_REASON))
        logger.error(
            "Broadcast fan-out lost the channel layer (%s); closed %d signed-in socket(s) so "
            "that they reconnect, and refusing new sockets until it is back",
            reason,
            closed,
        )

    def _regain(self) -> None:
        if self.lost is None:
            return
        logger.warning(
            "Broadcast fan-out has the channel layer again, after %.0f s",
            time.monotonic() - self.lost_since,
        )
        self.lost = None
        metrics.LAYER_RECONNECTS.inc()
        if self.joined is not None:
            self.joined.set()
        self.tell_everyone(protocol.status(live=True))

    def close_signed_in(self) -> int:
        """Close every signed-in socket with 1013: it reconnects once the layer is back."""
        consumers = list(self.keys_of)
        for consumer in consumers:
            self.unregister(consumer)
            spawn(consumer.close(code=close_codes.TRY_AGAIN_LATER, reason=LOST_REASON))
        return len(consumers)

    def tell_everyone(self, text: str) -> None:
        """Write one message to every socket of this worker (each once, whatever its
        audiences)."""
        frame = Frame(text)
        recipients = list(self.sockets.values())
        for recipient in recipients:
            recipient.push(frame)
        child(metrics.MESSAGES, "out", protocol.type_of(text)).inc(len(recipients))

    def problem(self) -> str | None:
        """Why this worker's fan-out cannot deliver now (for /healthz), or None."""
        if self.lost is None:
            return None
        return f"lost the channel layer {time.monotonic() - self.lost_since:.0f} s ago: {self.lost}"

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == stored.TOPIC_EVENT:
            self.streams.receive(event)
        elif kind == LOGOUT:
            self.sign_out(event["signed_in"])
        elif kind == CHANGED:
            self.presence.changed(event["topic"])
        elif kind == topics.RECHECK:
            self.recheck(event["user"])
        elif kind == PROBE:
            self._probe_returned(event)

    def sign_out(self, key: str) -> int:
        """End this worker's sockets of a session that signed out, or of a user whose access
        changed: their topic subscriptions are checked again (unsubscribed if no longer
        allowed), then they close (4001). Returns how many."""
        self._remember_sign_out(key)
        consumers = list(self.signed_in.get(key, ()))
        for consumer in consumers:
            subscriptions = self._app_topics(consumer)
            self.unregister(consumer)
            spawn(self._end_signed_in(consumer, subscriptions, key.startswith("session:")))
        return len(consumers)

    def _app_topics(self, consumer: Any) -> list[str]:
        return [
            s.wire for s in self.streams.subscriptions_of(consumer) if not s.name.startswith("$")
        ]

    async def _end_signed_in(self, consumer: Any, subscribed: list[str], gone: bool) -> None:
        if subscribed:  # else no reason to wait for the database
            user = await database_sync_to_async(current_user)(consumer, gone)
            for topic in await database_sync_to_async(forbidden_topics)(user, subscribed):
                await consumer.send(text_data=protocol.unsubscribed(topic, "forbidden"))
        await consumer.close(code=close_codes.SIGNED_OUT, reason="Signed out")

    def recheck(self, user_pk: str) -> int:
        """Check the topic subscriptions of a user's sockets again; end those no longer
        allowed. Returns how many sockets are checked."""
        consumers = list(self.signed_in.get(f"user:{user_pk}", ()))
        for consumer in consumers:
            spawn(self._recheck(consumer))
        return len(consumers)

    async def _recheck(self, consumer: Any) -> None:
        user = await database_sync_to_async(current_user)(consumer)
        subscribed = self._app_topics(consumer)
        forbidden = await database_sync_to_async(forbidden_topics)(user, subscribed)
        for topic in forbidden:
            if self.streams.subscription(consumer, topic) is not None:
                self.streams.detach(consumer, topic)
                await consumer.send(text_data=protocol.unsubscribed(topic, "forbidden"))
        await self._recheck_presence(consumer, user, [t for t in subscribed if t not in forbidden])

    async def _recheck_presence(self, consumer: Any, user: Any, names: list[str]) -> None:
        """A subscriber whose topic's `presence` function no longer allows it stays subscribed
        (and counted) but hears no more `join` or `leave`."""
        watching = [
            name
            for name in names
            if topics.presence_needs_database(name)
            and getattr(self.streams.subscription(consumer, name), "presence", False)
        ]
        if not watching:
            return
        hidden = await database_sync_to_async(no_longer_seeing)(user, watching)
        for name in hidden:
            subscription = self.streams.subscription(consumer, name)
            if subscription is not None:
                subscription.presence = False

    def _remember_sign_out(self, key: str) -> None:
        now = self.wall_clock()
        self.recent_sign_outs.pop(key, None)
        self.recent_sign_outs[key] = now
        while self.recent_sign_outs and (
            len(self.recent_sign_outs) > SIGN_OUTS_REMEMBERED
            or next(iter(self.recent_sign_outs.values())) < now - SIGN_OUT_MEMORY
        ):
            self.recent_sign_outs.popitem(last=False)

    def _signed_out_since(self, keys: tuple[str, ...], connected: float) -> bool:
        for key in keys:
            handled = self.recent_sign_outs.get(key)
            if handled is not None and (key.startswith("session:") or handled > connected):
                return True
        return False

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
            allowed = topics.allowed(user, name)
        except Exception:  # noqa: BLE001 - an app's check that fails allows nothing
            logger.exception("authorize() of topic %s failed; ending the subscription", name)
            allowed = False
        if not allowed:
            forbidden.append(name)
    return forbidden


def no_longer_seeing(user: Any, names: list[str]) -> list[str]:
    """The presence topics of `names` whose `presence` function no longer allows `user`."""
    return [name for name in names if not topics.sees_presence(user, name)]


fanout = Fanout()
