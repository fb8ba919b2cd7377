"""The WebSocket consumer behind /ws/: welcome, ping, error replies and group messages."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from realtime import protocol
from realtime.worker import worker_id

# Every socket joins this group; a group event {"type": "realtime.send", "text": ...} reaches
# them all. The text is serialized once by the sender, not once per socket.
EVERYONE_GROUP = "realtime.everyone"


class RealtimeConsumer(AsyncWebsocketConsumer):
    groups = [EVERYONE_GROUP]

    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data=self._welcome())

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

    async def realtime_send(self, event: dict[str, Any]) -> None:
        """Group event: forward pre-serialized text to this socket."""
        await self.send(text_data=event["text"])
