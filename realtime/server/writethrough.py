"""An open WebSocket's bytes go to its socket at once when nothing is waiting before them.

Twisted holds every write twice before it reaches the socket. Its TLS transport
(`BufferingTLSTransport`) collects the writes of one reactor iteration and encrypts them in the
next (a `callLater(0)` per connection), and its TCP transport keeps the bytes until epoll
reports the socket writable (one epoll_ctl to watch it, another to stop). For a broadcast
written to thousands of sockets in one loop, or the keep-alive pings of thousands of idle ones,
those steps cost more than the send() itself: in a worker's profile during broadcasts, send()
took 29% of the time, the epoll registrations 25%, the per-socket callLater 8% and OpenSSL 7%.
asyncio's own transports do what this module does: try send() at once while their buffer is
empty, and only wait for the socket to become writable when the kernel takes less than all.

- TLS: `WriteThroughTLSFactory` is Twisted's `TLSMemoryBIOFactory` building the unbuffered
  `TLSMemoryBIOProtocol` (Twisted's documented `protocol` attribute): a write is encrypted
  when it is made. The `realtime:` endpoint uses it for every connection. An HTTP response
  (headers, then body) becomes two TLS records instead of one; a WebSocket frame is one write
  either way.
- TCP: once a WebSocket is open, `WriteThroughWebSocketProtocol` makes its TCP transport try
  send() while nothing is buffered (realtime.upstream.send_when_idle: Twisted has no public
  way, so that one reaches into its buffer state). Where that is missing, the socket keeps
  Twisted's own writes: it works as before, only slower; each worker logs a warning at its
  first WebSocket, and tests/test_upstream.py fails.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from realtime.server.closing import AppCloseWebSocketProtocol
from realtime.upstream import send_when_idle

logger = logging.getLogger(__name__)
reported: set[str] = set()  # "TLS" and "plain": said once per process for each


class WriteThroughTLSFactory(TLSMemoryBIOFactory):
    """Twisted's TLS wrapper, encrypting and writing each write at once."""

    protocol = TLSMemoryBIOProtocol


def tcp_transport_of(transport: Any) -> Any:
    """The TCP transport under a socket's protocol wrappers (TLS; the PROXY header's reader,
    realtime/server/proxy_protocol.py): each wrapper's write passes straight down to it."""
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport


def write_through(transport: Any) -> set[str]:
    """Switch an open WebSocket's transport (TLS over TCP, or TCP) to writing at once.

    Returns the layers that write at once: {"tls", "tcp"} over the `realtime:` endpoint's TLS,
    {"tcp"} over plain TCP or over a TLS wrapper that buffers (daphne's stock `ssl:`)."""
    layers = set()
    tls = transport if isinstance(transport, TLSMemoryBIOProtocol) else None
    tcp = tcp_transport_of(transport)
    if send_when_idle(tcp):
        layers.add("tcp")
    if tls is not None and not isinstance(tls, BufferingTLSTransport):
        layers.add("tls")
    return layers


class WriteThroughWebSocketProtocol(AppCloseWebSocketProtocol):
    """The project's WebSocket protocol (RealtimeServer installs it): once open, it writes
    through."""

    def onOpen(self) -> None:
        super().onOpen()
        kind = "TLS" if isinstance(self.transport, TLSMemoryBIOProtocol) else "plain"
        layers = write_through(self.transport)
        if kind not in reported:
            reported.add(kind)
            report(kind, layers)


def report(kind: str, layers: set[str]) -> None:
    """Say, once per process and kind of socket, whether its writes go through at once."""
    if "tcp" not in layers:
        logger.warning(
            "WebSocket writes over %s keep Twisted's buffering: this Twisted lacks what "
            "realtime.upstream.send_when_idle needs. Broadcasts still work, more slowly.",
            kind,
        )
    elif kind == "TLS" and "tls" not in layers:
        logger.info(
            "WebSocket writes over TLS are collected for one reactor iteration before they "
            "are encrypted: serve with the realtime: endpoint to write them at once."
        )
    else:
        logger.info("WebSocket writes over %s go straight to the socket.", kind)
