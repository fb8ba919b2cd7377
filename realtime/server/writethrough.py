"""An open WebSocket's bytes go to its socket at once when nothing is waiting before them.

Twisted holds every write twice: its TLS transport encrypts a reactor iteration's writes in
the next one (a `callLater(0)` per connection), and its TCP transport waits for epoll to report
the socket writable. Here, as asyncio's own transports do, a write is tried at once.

- TLS: `WriteThroughTLSFactory`, Twisted's `TLSMemoryBIOFactory` building the unbuffered
  `TLSMemoryBIOProtocol`, encrypts each write when it is made (every `realtime:` connection).
- TCP: `WriteThroughWebSocketProtocol` has an open WebSocket's transport try send() while
  nothing is buffered (realtime.upstream.send_when_idle, Twisted internals); where that is
  missing it keeps Twisted's writes, and logs it. Why and what it measured: docs/benchmarks.md.
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
