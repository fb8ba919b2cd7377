"""A cap on the bytes a WebSocket may leave unsent: a client that stops reading is dropped.

Frames are written whether or not the client reads them; once the kernel's socket buffer is
full, Twisted keeps the rest in memory, without bound. 14 sockets that stopped reading during a
burst of 6,000 broadcasts cost one worker +127 MB, which it kept after they closed. Twisted's
public answer is a streaming producer: a transport calls its `pauseProducing()` when more than
its `bufferSize` bytes wait. Each open socket registers one (through autobahn's
`registerProducer`, in place of the HTTPChannel that served the handshake), with the TCP
transport's `bufferSize` set to REALTIME_WS_MAX_UNSENT_BYTES.
When Twisted pauses it, the connection is aborted and its buffer freed: a close frame would
wait behind the bytes the client is not reading. The client sees the connection drop (1006)
and resumes from the last broadcast it has, so it misses nothing (docs/protocol.md, resume).
"""

from __future__ import annotations

import logging
from typing import Any

from realtime.server.config import SERVER_DEFAULTS
from realtime.server.writethrough import tcp_transport_of
from realtime.upstream import limit_write_buffer, release_from_http_channel

logger = logging.getLogger(__name__)


class DropWhenBacklogged:
    """A streaming producer (Twisted's IPushProducer) that aborts its socket when paused."""

    def __init__(self, protocol: Any, cap: int) -> None:
        self.protocol, self.cap, self.dropped = protocol, cap, False

    def pauseProducing(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        logger.warning(
            "Dropped a WebSocket from %s: more than %d bytes unsent (it stopped reading).",
            self.protocol.peer,
            self.cap,
        )
        self.protocol.transport.abortConnection()

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class UnsentCap:
    """A mixin for daphne's WebSocketProtocol; RealtimeServer sets `max_unsent`."""

    max_unsent: int = SERVER_DEFAULTS.ws_max_unsent_bytes  # 0: no cap

    def onOpen(self) -> None:
        super().onOpen()
        if self.max_unsent > 0:
            transport = self.transport
            limit_write_buffer(tcp_transport_of(transport), self.max_unsent)
            # Twisted's HTTPChannel registered itself when the connection was still HTTP, and
            # would only stop reading from a client that stops reading: it makes way.
            release_from_http_channel(transport)
            self.registerProducer(DropWhenBacklogged(self, self.max_unsent), True)
