"""The WebSocket consumer behind /ws/: welcome, ping, error replies and broadcasts.

Authorization is per message: a socket may only confirm the audiences it was given at connect
(`subscribe`), and only staff may send a broadcast.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils import timezone

from realtime import broadcast
from realtime.broadcasting import fanout as delivery
from realtime.broadcasting import presence
from realtime.broadcasting.replay import missed_since
from realtime.broadcasting.sending import audiences_for
from realtime.conf import conf
from realtime.models import Broadcast
from realtime.server.worker import worker_id
from realtime.upstream import handler_name
from realtime.websocket import protocol
from realtime.websocket.protocol import TRY_AGAIN_LATER
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


def validation_detail(exc: ValidationError) -> str:
    return " ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())


class RealtimeConsumer(AsyncWebsocketConsumer):
    audiences: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one socket: its client's events, one after the other.

        Channels' AsyncConsumer gives every socket a channel of its own on the layer (a Redis
        subscription) and waits on it and the client together, with a new task and an
        `asyncio.wait` for every message. Broadcasts and sign-outs reach this socket through
        its worker's fan-out (realtime.broadcasting.fanout) instead, so the client is the only
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

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        # Audience is decided here, on the server, from the session's user.
        self.audiences = audiences_for(self.scope.get("user"))
        self.connected_at = timezone.now()
        await super().websocket_connect(message)

    async def _try_again_later(self, exc: Exception) -> None:
        # Redis is unreachable (restarting?): no broadcast could reach this socket. Say "try
        # again later" instead of crashing; the client reconnects with backoff and resumes,
        # so nothing is lost.
        logger.warning("Refusing a WebSocket while the channel layer fails: %s", exc)
        await self.close(code=TRY_AGAIN_LATER, reason="The server lost its channel layer")

    async def connect(self) -> None:
        await self.accept()
        presence.joined(self.audiences)
        self._counted = True
        await self.send(text_data=self._welcome())
        # After the welcome, so that no broadcast precedes it: the client resumes from the
        # welcome, and whatever was published before this line is in the replay.
        signed_in = signed_in_session(self.scope)
        try:
            await delivery.fanout.register(self, self.audiences, self.connected_at, signed_in)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            await self._try_again_later(exc)

    async def disconnect(self, code: int) -> None:
        delivery.fanout.unregister(self)
        if getattr(self, "_counted", False):
            presence.left(self.audiences)
            self._counted = False

    def _welcome(self) -> str:
        user = self.scope.get("user")
        return protocol.welcome(
            scheme=self.scope["scheme"],
            worker=worker_id(),
            user=user.get_username() if user is not None and user.is_authenticated else None,
            tls=self.scope.get("extensions", {}).get("tls"),
            idle_timeout=max(conf.REALTIME_WS_IDLE_TIMEOUT, 0),
        )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            await self.send(
                text_data=protocol.error(
                    "binary_not_supported", "Binary frames are not accepted; send JSON text."
                )
            )
            return
        try:
            message = protocol.parse_client_message(text_data)
        except protocol.ProtocolError as exc:
            await self.send(text_data=protocol.error(exc.code, exc.detail))
            return
        if message["type"] == "ping":
            await self.send(text_data=protocol.pong())
        elif message["type"] == "resume":
            await self._resume(message["after"])
        elif message["type"] == "subscribe":
            await self._subscribe(message["audience"])
        elif message["type"] == "broadcast":
            await self._broadcast(message)

    async def _resume(self, after: int) -> None:
        """Replay what this socket's audiences missed; live broadcasts may interleave, and
        the client orders and de-duplicates by id."""
        replay = await database_sync_to_async(missed_since)(after, self.audiences)
        if replay.failure:
            await self.send(text_data=protocol.resume_failed(after, replay.failure, replay.latest))
            return
        for text in replay.texts:
            await self.send(text_data=text)
        await self.send(text_data=protocol.resumed(after, len(replay.texts), replay.latest))

    async def _subscribe(self, audience: str) -> None:
        """Audiences are joined at connect from the session's user; this confirms one, and
        refuses (changing nothing) any other: a client cannot add itself to a group."""
        if audience not in self.audiences:
            detail = "This socket may not receive that audience's broadcasts."
            await self.send(text_data=protocol.error("forbidden", detail))
            return
        await self.send(text_data=protocol.subscribed(audience))

    async def _broadcast(self, message: dict[str, Any]) -> None:
        user = self.scope.get("user")
        if not is_staff(user):
            await self.send(text_data=protocol.error("forbidden", "Only staff may broadcast."))
            return
        try:
            fields = protocol.broadcast_request(message)
            sent = await database_sync_to_async(send_as_staff)(user, *fields)
        except protocol.ProtocolError as exc:
            await self.send(text_data=protocol.error(exc.code, exc.detail))
            return
        except ValidationError as exc:
            await self.send(text_data=protocol.error("invalid_broadcast", validation_detail(exc)))
            return
        if sent is None:
            await self.send(text_data=protocol.error("forbidden", "Only staff may broadcast."))
            return
        await self.send(text_data=protocol.broadcast_sent(sent.pk))
