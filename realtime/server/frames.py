"""The scope extension through which the app writes to a daphne WebSocket directly.

RealtimeServer puts a `WebSocketFrames` into every WebSocket scope it serves, as
`extensions["realtime.websocket"]`. The broadcasting fan-out uses it to build a broadcast's
frame once and hand it to each of its sockets, without a consumer task per socket. Through
autobahn's prepared messages; realtime.upstream writes them (compression, were it
negotiated, still goes through autobahn's public call).
"""

from __future__ import annotations

from typing import Any

from realtime.upstream import write_prepared

EXTENSION = "realtime.websocket"


class WebSocketFrames:
    """Prepared frames for one daphne WebSocket: build once, send to many."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def prepare(self, text: str) -> Any:
        """A text frame for any socket of this server (server frames are not masked)."""
        return self._protocol.factory.prepareMessage(text.encode())

    def send_prepared(self, prepared: Any) -> None:
        """Send a prepared frame if the socket is open (called in the event loop's thread)."""
        protocol = self._protocol
        if protocol.state == protocol.STATE_OPEN:
            write_prepared(protocol, prepared)
