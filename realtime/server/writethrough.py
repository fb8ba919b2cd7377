"""An open WebSocket's bytes go to its socket at once when nothing is waiting before them.

Twisted holds every write twice before it reaches the socket. Its TLS transport collects the
writes of one reactor iteration and encrypts them in the next (a `callLater(0)` per
connection), and its TCP transport keeps the bytes until epoll reports the socket writable
(one epoll_ctl to watch it, another to stop). For a broadcast written to thousands of sockets
in one loop, or the keep-alive pings of thousands of idle ones, those steps cost more than the
send() itself: in a worker's profile during broadcasts, send() took 29% of the time, the epoll
registrations 25%, the per-socket callLater 8% and OpenSSL 7%. asyncio's own transports do
what this module does: try send() at once while their buffer is empty, and only wait for the
socket to become writable when the kernel takes less than all.

`write_through(transport)` switches one upgraded WebSocket's transport over:

- TLS: writes are encrypted when made instead of in the next iteration (what was collected
  until then is written first). A WebSocket frame is one write, so nothing is lost by not
  collecting them.
- TCP: a write tries send() when the transport's buffer is empty; what the kernel does not
  take, and every write while anything is buffered, goes through Twisted's buffered write, so
  the order of bytes never changes.

It reaches into Twisted: `BufferingTLSTransport._aggregator` and `FileDescriptor`'s
`_tempDataBuffer`, `dataBuffer`, `offset` and `_writeDisconnected` (Twisted 26.10, pinned in
requirements.txt). Where one of them is missing, that layer keeps Twisted's own writes: the
server works as before, only slower; each worker logs a warning at its first WebSocket, and
tests/test_writethrough.py fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from twisted.protocols.tls import TLSMemoryBIOProtocol

from realtime.server.closing import AppCloseWebSocketProtocol

TCP_STATE = ("_tempDataBuffer", "dataBuffer", "offset", "_writeDisconnected", "writeSomeData")

logger = logging.getLogger(__name__)
reported: set[str] = set()  # "TLS" and "plain": said once per process for each


def write_through(transport: Any) -> set[str]:
    """Switch an open WebSocket's transport (TLS over TCP, or TCP) to writing at once.
    Returns the layers switched: {"tls", "tcp"} over TLS, {"tcp"} without."""
    switched = set()
    tls = transport if isinstance(transport, TLSMemoryBIOProtocol) else None
    tcp = tls.transport if tls is not None else transport
    if all(hasattr(tcp, name) for name in TCP_STATE):
        tcp.write = _send_when_idle(tcp, tcp.write)
        switched.add("tcp")
    # TLS second: what its aggregator still holds then goes out through the new TCP write.
    if tls is not None and _tls_unbuffered(tls):
        switched.add("tls")
    return switched


def _tls_unbuffered(tls: TLSMemoryBIOProtocol) -> bool:
    aggregator = getattr(tls, "_aggregator", None)
    if not callable(getattr(aggregator, "flush", None)):
        return False
    aggregator.flush()  # what it collected goes out before anything written from now on

    def write(data: bytes) -> None:
        TLSMemoryBIOProtocol.write(tls, data)

    def write_sequence(sequence: Iterable[bytes]) -> None:
        write(b"".join(sequence))

    # Instance attributes, as BufferingTLSTransport itself sets `write`; its connectionLost
    # sets `write` again, to drop what is written after the loss.
    tls.write = write  # type: ignore[method-assign]
    tls.writeSequence = write_sequence  # type: ignore[method-assign]
    return True


def _send_when_idle(tcp: Any, buffered_write: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        if (
            data
            and tcp.connected
            and not tcp.disconnecting
            and not tcp._writeDisconnected
            and not tcp._tempDataBuffer
            and len(tcp.dataBuffer) == tcp.offset
        ):
            sent = tcp.writeSomeData(data)
            if isinstance(sent, int) and sent > 0:
                if sent == len(data):
                    return
                data = data[sent:]
            # 0 (the kernel's buffer is full) or a lost connection: Twisted's buffered write
            # waits for writability, and its doWrite finds the loss.
        buffered_write(data)

    return write


class WriteThroughWebSocketProtocol(AppCloseWebSocketProtocol):
    """The project's WebSocket protocol (RealtimeServer installs it): once open, it writes
    through."""

    def onOpen(self) -> None:
        super().onOpen()
        kind = "TLS" if isinstance(self.transport, TLSMemoryBIOProtocol) else "plain"
        switched = write_through(self.transport)
        if kind not in reported:
            reported.add(kind)
            report(kind, switched)


def report(kind: str, switched: set[str]) -> None:
    """Say, once per process and kind of socket, whether its writes go through at once."""
    expected = {"tls", "tcp"} if kind == "TLS" else {"tcp"}
    if switched == expected:
        logger.info("WebSocket writes over %s go straight to the socket.", kind)
    else:
        missing = ", ".join(sorted(expected - switched)).upper()
        logger.warning(
            "WebSocket writes over %s keep Twisted's buffering at the %s layer: this Twisted "
            "lacks what realtime/server/writethrough.py needs. Broadcasts still work, more slowly.",
            kind,
            missing,
        )
