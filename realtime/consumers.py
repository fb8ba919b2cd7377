"""The WebSocket consumer behind /ws/: welcome, ping, error replies and broadcasts."""

from __future__ import annotations

import logging
from typing import Any

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from realtime import presence, protocol
from realtime.broadcast import audiences_for, group_for, missed_since
from realtime.worker import worker_id

logger = logging.getLogger("realtime.consumers")

TRY_AGAIN_LATER = 1013  # RFC 6455 registry: the server is overloaded or a dependency is down


class RealtimeConsumer(AsyncWebsocketConsumer):
    audiences: list[str] = []

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        # Audience is decided here, on the server, from the session's user: a socket joins
        # only the groups of the audiences it belongs to.
        self.audiences = audiences_for(self.scope.get("user"))
        self.groups = [group_for(audience) for audience in self.audiences]
        try:
            await super().websocket_connect(message)
        except (redis.RedisError, OSError) as exc:
            # Redis is unreachable (restarting?): no broadcast could reach this socket. Say
            # "try again later" instead of crashing; the client reconnects with backoff and
            # resumes, so nothing is lost.
            logger.warning("Refusing a WebSocket while the channel layer fails: %s", exc)
            self.groups = []
            await self.accept()
            await self.close(code=TRY_AGAIN_LATER)

    async def connect(self) -> None:
        await self.accept()
        presence.joined(self.audiences)
        self._counted = True
        await self.send(text_data=self._welcome())

    async def disconnect(self, code: int) -> None:
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

    async def realtime_send(self, event: dict[str, Any]) -> None:
        """Group event: forward text serialized once by the sender (realtime.broadcast)."""
        await self.send(text_data=event["text"])
