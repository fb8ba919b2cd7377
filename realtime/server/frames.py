"""The scope extension through which the app writes to a daphne WebSocket directly.

RealtimeServer puts a `WebSocketFrames` into every WebSocket scope it serves, as
`extensions["realtime.websocket"]`. The broadcasting fan-out uses it to build a broadcast's
frame once and hand it to each of its sockets, without a consumer task per socket: a
`SharedFrame` (realtime/server/compression.py), deflated once for the sockets that negotiated
permessage-deflate.
"""

from __future__ import annotations

from typing import Any

from realtime.server.compression import SharedFrame
from realtime.server.writethrough import tcp_transport_of
from realtime.upstream import unsent_bytes

EXTENSION = "realtime.websocket"


class WebSocketFrames:
    """Frames for one daphne WebSocket: build once, send to many."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    @staticmethod
    def prepare(text: str) -> SharedFrame:
        """A text message's frames for any socket of this server."""
        return SharedFrame(text.encode())

    def send_prepared(self, prepared: SharedFrame) -> None:
        """Send a prepared frame if the socket is open (called in the event loop's thread)."""
        protocol = self._protocol
        if protocol.state == protocol.STATE_OPEN:
            prepared.send_to(protocol)

    def unsent(self) -> int:
        """Bytes written to this socket that the kernel has not taken yet."""
        return unsent_bytes(tcp_transport_of(self._protocol.transport))
