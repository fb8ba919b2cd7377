"""The WebSocket consumer behind /ws/: welcome, ping, resume, topics, calls, error replies.

Authorization is per message: a socket may subscribe to a topic only when its pattern's
`authorize` allows its user (realtime.messaging.topic_rules), may only confirm the audiences it
was given at connect, and only staff may send a broadcast.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import parse_qs

import redis
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import DatabaseError
from django.utils import timezone

from realtime import broadcast, wire
from realtime.common.close_codes import TRY_AGAIN_LATER
from realtime.conf import conf
from realtime.messaging import audience_counts, signed_streams, topic_rules
from realtime.messaging.delivery import Subscription, count_replayed
from realtime.messaging.fanout import fanout
from realtime.messaging.rechecks import current_user, forbidden_topics
from realtime.messaging.sending import audiences_for
from realtime.messaging.signed_streams import Verdict
from realtime.messaging.streams import BROADCASTS, user_stream
from realtime.models import Broadcast
from realtime.ops import metrics
from realtime.server import prometheus
from realtime.server.prometheus import child
from realtime.server.worker import worker_id
from realtime.upstream import AsyncWebsocketConsumer, handler_name
from realtime.websocket import calls, presence_updates, publishing, replay_budget, versions
from realtime.websocket.sessions import signed_in_session

logger = logging.getLogger("realtime.websocket.consumer")


def is_authenticated(user: Any) -> bool:
    return user is not None and user.is_authenticated


def is_staff(user: Any) -> bool:
    return is_authenticated(user) and user.is_staff


def send_as_staff(user: Any, message: str, level: str, audience: str) -> Broadcast | None:
    """Send a broadcast if `user` is active staff now, not only when the socket opened."""
    staff = get_user_model().objects.filter(pk=user.pk, is_active=True, is_staff=True)
    if not staff.exists():
        return None
    return broadcast.send(message, level=level, audience=audience, sender=user)


def url_position(value: str) -> tuple[str, int] | None:
    """`<epoch>:<offset>` from a resume URL, as (epoch, offset), or None."""
    epoch, _, offset = value.partition(":")
    try:
        return wire.position({"epoch": epoch, "offset": int(offset)}, "invalid_resume")
    except (ValueError, wire.ProtocolError):
        return None


def access_now(consumer: Any, topic: str) -> tuple[Any, bool]:
    """The socket's user as the database has it now, and whether it may subscribe to `topic`.

    Not the user loaded at connect: Django caches permissions on a user object at its first
    `has_perm`, so a right revoked since would come back at the next subscribe (and an app's
    `authorize` may read other state cached on it). A fresh object costs one query by primary
    key (none for an anonymous socket); a user deleted or deactivated since is anonymous."""
    user = current_user(consumer)
    if topic == topic_rules.USER:
        return user, is_authenticated(user)
    return user, not forbidden_topics(user, [topic])


SIGNED_REFUSALS = {
    Verdict.FORBIDDEN: "This socket may not subscribe to that topic.",
    Verdict.EXPIRED: (
        "The page's signed stream name no longer holds (too old, or rendered for another "
        "user or other rights): load the page again."
    ),
}


def signed_access_now(consumer: Any, topic: str, token: str) -> tuple[Any, Verdict]:
    """The socket's user as the database has it now, and whether signed stream name `token`
    lets it subscribe to `topic` (a valid name, not "user")."""
    user = current_user(consumer)
    if topic == topic_rules.USER or not topic_rules.NAME.fullmatch(topic):
        return user, Verdict.FORBIDDEN
    return user, signed_streams.verify(token, topic, user)


def validation_detail(exc: ValidationError) -> str:
    return " ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())


def client_limits() -> dict[str, Any]:
    """What a client keeps to (the welcome's `limits`): the largest message in bytes, the
    messages per second and at once it may send, and for how many seconds an unanswered
    publish may be sent again with its id (after that it would be stored twice)."""
    return {
        "max_message": conf.REALTIME_WS_MAX_MESSAGE_SIZE,
        "rate": max(conf.REALTIME_WS_RATE, 0),
        "burst": conf.REALTIME_WS_BURST,
        "publish_id_ttl": conf.REALTIME_PUBLISH_ID_TTL,
    }


class RealtimeConsumer(AsyncWebsocketConsumer):
    audiences: list[str] = []
    protocol: int | None = versions.UNNAMED  # the protocol version this socket speaks

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one socket: its client's events, one after the other.

        Channels' AsyncConsumer gives every socket a channel of its own on the layer (a Redis
        subscription) and waits on it and the client together, with a new task and an
        `asyncio.wait` for every message. Broadcasts and sign-outs reach this socket through
        its worker's fan-out (realtime.messaging.fanout) instead, so the client is the only
        source.
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels 4.2+ runs close_old_connections in a worker thread before every handler: a
        # thread hop for each incoming message, which halved echo throughput here
        # (bench/results). This consumer reaches the database only through
        # database_sync_to_async, which closes stale connections itself around each call.
        handler = getattr(self, handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        # Channels' own also leaves the consumer's groups (it has none) and runs
        # close_old_connections in a worker thread: a thread hop per closed socket. The app
        # reaches the database only through database_sync_to_async (here and in the fan-out),
        # which runs close_old_connections around each call itself.
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        # Audience is decided here, on the server, from the session's user.
        self.audiences = audiences_for(self.scope.get("user"))
        self.connected_at = timezone.now()
        self.socket_id = uuid.uuid4().hex  # its ephemeral publishes do not come back to it
        await super().websocket_connect(message)

    async def _try_again_later(self, exc: Exception) -> None:
        # Redis is unreachable (restarting?): no broadcast could reach this socket. Say "try
        # again later" instead of crashing; the client reconnects with backoff and resumes,
        # so nothing is lost.
        logger.warning("Refusing a WebSocket while the channel layer fails: %s", exc)
        prometheus.refuse("layer_lost")
        await self.close(code=TRY_AGAIN_LATER, reason="The server lost its channel layer")

    async def connect(self) -> None:
        offered = self.scope.get("subprotocols") or []
        protocol, subprotocol = versions.negotiate(offered)
        self.protocol = protocol
        await self.accept(subprotocol)
        if protocol is None:
            await versions.refuse(self, offered)
            return
        self.replay_budget = replay_budget.ReplayBudget(self.scope)
        asked = self._replays_asked()
        # A socket that asks for no replay is never refused for its address's replays.
        wait = self.replay_budget.take(asked) if asked else 0.0
        if wait > 0:
            await self._too_many_replays(wait)
            return
        audience_counts.joined(self.audiences)
        self._counted = True
        signed_in = signed_in_session(self.scope)
        try:
            positions = await fanout.register(self, self.audiences, self.connected_at, signed_in)
        except (redis.RedisError, OSError, TimeoutError, DatabaseError) as exc:
            await self._try_again_later(exc)
            return
        self._count_open()
        # Nothing awaited since the registration: the streams the client resumes hold their
        # live messages until the replay is sent, so it never sees a later one first.
        resuming = self._resuming()
        for subscription, _ in resuming:
            subscription.hold()
        try:
            await self.send(text_data=self._welcome(positions))
            for subscription, since in resuming:
                await self._replay(subscription, since)
        finally:
            for subscription, _ in resuming:
                subscription.release()

    def _replays_asked(self) -> int:
        """How many replays the positions in the URL ask for (`user` only when signed in)."""
        asked = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        own = {"user"} if self._own_stream() is not None else set()
        return sum(key in asked for key in ("broadcasts", *own))

    async def _too_many_replays(self, wait: float) -> None:
        # Before the welcome and before any live message: the client keeps the positions it
        # has and reconnects with them later (1013), so refusing loses it nothing.
        seconds = replay_budget.retry_after(wait)
        logger.info(
            "Refused a WebSocket's replays: too many from its address (%d).", TRY_AGAIN_LATER
        )
        prometheus.refuse("replays_per_address")
        reason = f"Too many replays from your address: reconnect in {seconds} s"
        await self.close(code=TRY_AGAIN_LATER, reason=reason)

    def _resuming(self) -> list[tuple[Subscription, tuple[str, int] | None]]:
        """The socket's streams the client asked to resume in its URL (`?broadcasts=E:N` and
        `&user=E:N`, docs/protocol.md), with the positions; None for one it spelt wrong."""
        asked = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        names = {"broadcasts": BROADCASTS}
        own = self._own_stream()
        if own is not None:
            names["user"] = own
        resuming = []
        for key, name in names.items():
            subscription = fanout.streams.subscription(self, name)
            if key in asked and subscription is not None:
                resuming.append((subscription, url_position(asked[key][-1])))
        return resuming

    async def _replay(self, subscription: Subscription, since: tuple[str, int] | None) -> None:
        if since is None:
            detail = 'A position in the URL must be "<epoch>:<offset>" from the server.'
            await self.send(text_data=wire.error("invalid_resume", detail))
        elif subscription.name == BROADCASTS:
            await self._replay_broadcasts(subscription, *since)
        else:
            await self._start(subscription, "", since)

    async def disconnect(self, code: int) -> None:
        calls.close(self)
        fanout.unregister(self)
        if getattr(self, "_counted", False):
            audience_counts.left(self.audiences)
            self._counted = False
        child(metrics.CLOSES, metrics.close_code_label(code)).inc()
        open_sockets, self._open_sockets = getattr(self, "_open_sockets", None), None
        if open_sockets is not None:
            open_sockets.dec()

    def _count_open(self) -> None:
        child(prometheus.HANDSHAKES, "accepted", "").inc()
        audience = self.audiences[-1] if self.audiences else "none"  # the widest it has
        scheme = self.scope["scheme"]
        self._open_sockets = child(metrics.OPEN_SOCKETS, worker_id(), scheme, audience)
        self._open_sockets.inc()

    async def send(self, text_data: Any = None, bytes_data: Any = None, close: Any = False) -> None:
        if text_data is not None:
            child(metrics.MESSAGES, "out", wire.type_of(text_data)).inc()
        await super().send(text_data, bytes_data, close)

    def _welcome(self, positions: dict[str, Any]) -> str:
        user = self.scope.get("user")
        return wire.welcome(
            scheme=self.scope["scheme"],
            worker=worker_id(),
            user=user.get_username() if user is not None and user.is_authenticated else None,
            tls=self.scope.get("extensions", {}).get("tls"),
            idle_timeout=max(conf.REALTIME_WS_IDLE_TIMEOUT, 0),
            positions=positions,
            protocol=self.protocol,
            limits=client_limits(),
        )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.protocol is None:  # told to reload and closing: nothing more is served
            return
        if text_data is None:
            child(metrics.MESSAGES, "in", "binary").inc()
            await self.send(
                text_data=wire.error(
                    "binary_not_supported", "Binary frames are not accepted; send JSON text."
                )
            )
            return
        try:
            message = wire.parse_client_message(text_data)
        except wire.ProtocolError as exc:
            child(metrics.MESSAGES, "in", "invalid").inc()
            await self.send(text_data=wire.error(exc.code, exc.detail))
            return
        child(metrics.MESSAGES, "in", message["type"]).inc()  # one of the known types
        if message["type"] == "ping":
            await self.send(text_data=wire.pong())
        elif message["type"] == "resume":
            await self._resume(*message["since"])
        elif message["type"] == "subscribe" and "topic" in message:
            await self._subscribe_topic(
                message["topic"], message.get("since"), message.get("signed")
            )
        elif message["type"] == "subscribe":
            await self._subscribe(message["audience"])
        elif message["type"] == "unsubscribe":
            await self._unsubscribe(message["topic"])
        elif message["type"] == "broadcast":
            await self._broadcast(message)
        elif message["type"] == "publish":
            await publishing.publish(self, message)
        elif message["type"] == "presence_update":
            await presence_updates.handle(self, message)
        elif message["type"] == "call":
            await calls.of(self).receive(message)

    async def _resume(self, epoch: str, after: int) -> None:
        """Replay the broadcasts of this socket's audiences after `after`, up to where its live
        ones began, then `resumed`; live ones wait meanwhile. (Those that arrived between the
        welcome and this message came first: a client resumes in its URL to avoid that.)"""
        subscription = fanout.streams.subscription(self, BROADCASTS)
        if subscription is None:  # closing: its fan-out lost the layer
            return
        if not await self._may_replay():
            return
        subscription.hold()
        try:
            await self._replay_broadcasts(subscription, epoch, after)
        finally:
            subscription.release()

    async def _replay_broadcasts(self, subscription: Subscription, epoch: str, after: int) -> None:
        upto = subscription.covered_from
        replay = await fanout.streams.history(subscription, epoch, after)
        if replay.failure:
            await self.send(text_data=wire.resume_failed(replay.failure, replay.epoch, upto))
            return
        for entry in replay.entries:
            await self.send(text_data=entry.frame)
        count_replayed(subscription.name, len(replay.entries))
        self.replay_budget.charge(len(replay.entries))
        live_after = max(after, upto)  # a client may hold more than this worker delivered
        await self.send(text_data=wire.resumed(replay.epoch, live_after, len(replay.entries)))

    async def _subscribe_topic(
        self, topic: str, since: tuple[str, int] | None, signed: str | None = None
    ) -> None:
        """Subscribe to a topic its pattern (or the signed stream name `signed`) allows this
        user, from `since` when given (what was missed first, then live messages), else from
        now."""
        allowed = await self._stream_allowed(topic, signed)
        if allowed is None:
            return
        name, user = allowed
        if since is not None and not await self._may_replay(topic):
            return
        new = fanout.streams.subscription(self, name) is None
        epoch, subscription = await fanout.subscribe(self, name, topic)
        if new:  # a subscription authorize let in stays checked by it
            subscription.signed = signed is not None
        try:
            await self._start(subscription, epoch, since)
            if topic_rules.is_presence_topic(topic):
                await self._enter_presence(subscription, topic, user)
        finally:
            subscription.release()

    async def _may_replay(self, topic: str | None = None) -> bool:
        """Whether this socket's replay budget (and its address's) allows one more replay;
        if not, the client is told to ask again later, and nothing changes."""
        wait = self.replay_budget.take()
        if wait > 0:
            await self.send(text_data=replay_budget.refused(wait, topic))
        return wait == 0

    async def _enter_presence(self, subscription: Subscription, topic: str, user: Any) -> None:
        if topic_rules.presence_needs_database(topic):
            sees = await database_sync_to_async(topic_rules.sees_presence)(user, topic)
        else:
            sees = topic_rules.sees_presence(user, topic)
        users = await fanout.presence.enter(subscription, user, sees=sees)
        if sees:
            await self.send(text_data=wire.presence(topic, users))

    async def _stream_allowed(self, topic: str, signed: str | None) -> tuple[str, Any] | None:
        """The stream behind `topic` and the socket's user as stored now, if it may subscribe
        to it; else None, answered."""
        if topic != topic_rules.USER and self._too_many_subscriptions(topic):
            detail = f"At most {conf.REALTIME_WS_MAX_SUBSCRIPTIONS} topics per socket."
            await self.send(text_data=wire.topic_error("too_many_subscriptions", topic, detail))
            return None
        if signed is not None:
            return await self._signed_stream_allowed(topic, signed)
        user, allowed = await database_sync_to_async(access_now)(self, topic)
        name = (self._own_stream() if topic == topic_rules.USER else topic) if allowed else None
        if name is None:
            detail = "This socket may not subscribe to that topic."
            await self.send(text_data=wire.topic_error("forbidden", topic, detail))
            return None
        return name, user

    async def _signed_stream_allowed(self, topic: str, signed: str) -> tuple[str, Any] | None:
        user, verdict = await database_sync_to_async(signed_access_now)(self, topic, signed)
        if verdict is Verdict.ALLOWED:
            return topic, user
        detail = SIGNED_REFUSALS[verdict]
        await self.send(text_data=wire.topic_error(verdict.value, topic, detail))
        return None

    def _too_many_subscriptions(self, topic: str) -> bool:
        return self._app_subscriptions() >= conf.REALTIME_WS_MAX_SUBSCRIPTIONS and (
            fanout.streams.subscription(self, topic) is None
        )

    def _app_subscriptions(self) -> int:
        subscriptions = fanout.streams.subscriptions_of(self)
        return sum(not s.name.startswith("$") for s in subscriptions)

    async def _start(
        self, subscription: Subscription, epoch: str, since: tuple[str, int] | None
    ) -> None:
        topic, upto = subscription.wire, subscription.covered_from
        if since is None:
            text = wire.topic_subscribed(topic, epoch, subscription.position)
            await self.send(text_data=text)
            return
        replay = await fanout.streams.history(subscription, *since)
        if replay.failure:
            text = wire.resume_failed(replay.failure, replay.epoch, upto, topic)
            await self.send(text_data=text)
            await self.send(text_data=wire.topic_subscribed(topic, replay.epoch, upto))
            return
        await self.send(text_data=wire.topic_subscribed(topic, replay.epoch, since[1]))
        for entry in replay.entries:
            await self.send(text_data=entry.frame)
        count_replayed(subscription.name, len(replay.entries))
        self.replay_budget.charge(len(replay.entries))

    def _own_stream(self) -> str | None:
        """The stream of topic "user" on this socket: its user's own; None when anonymous."""
        user = self.scope.get("user")
        return user_stream(user.pk) if is_authenticated(user) else None

    async def _unsubscribe(self, topic: str) -> None:
        name = (self._own_stream() or topic) if topic == topic_rules.USER else topic
        fanout.streams.detach(self, name)
        await self.send(text_data=wire.unsubscribed(topic, "requested"))

    async def _subscribe(self, audience: str) -> None:
        """Audiences are joined at connect from the session's user; this confirms one, and
        refuses (changing nothing) any other: a client cannot add itself to a group."""
        if audience not in self.audiences:
            detail = "This socket may not receive that audience's broadcasts."
            await self.send(text_data=wire.error("forbidden", detail))
            return
        await self.send(text_data=wire.subscribed(audience))

    async def _broadcast(self, message: dict[str, Any]) -> None:
        user = self.scope.get("user")
        if not is_staff(user):
            await self.send(text_data=wire.error("forbidden", "Only staff may broadcast."))
            return
        try:
            fields = wire.broadcast_request(message)
            sent = await database_sync_to_async(send_as_staff)(user, *fields)
        except wire.ProtocolError as exc:
            await self.send(text_data=wire.error(exc.code, exc.detail))
            return
        except ValidationError as exc:
            await self.send(text_data=wire.error("invalid_broadcast", validation_detail(exc)))
            return
        if sent is None:
            await self.send(text_data=wire.error("forbidden", "Only staff may broadcast."))
            return
        await self.send(text_data=wire.broadcast_sent(sent.pk))
