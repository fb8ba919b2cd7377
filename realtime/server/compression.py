"""permessage-deflate (RFC 7692): every message compressed on its own, broadcasts once per worker.

No context is carried from one message to the next in either direction (the server asks for
`client_no_context_takeover`), so a message's compressed bytes do not depend on the socket: a
broadcast is deflated once per worker and the same frame (`SharedFrame`) goes to every socket
that negotiated it, and no socket keeps zlib state between messages (an incoming one inflates
through realtime.upstream's `MessageAtATimeDeflate`, up to REALTIME_WS_MAX_MESSAGE_SIZE).
Messages under COMPRESS_FROM bytes go out as they are; offers that limit the server's window
are declined; REALTIME_WS_COMPRESSION switches it off. The protocol: docs/protocol.md; the
limits on incoming data: docs/security.md; what it saves and costs: docs/benchmarks.md.
"""

from __future__ import annotations

import struct
import zlib
from functools import partial
from typing import Any

from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

from realtime.upstream import compression_of, hold_no_state_between_messages, write_frame

COMPRESS_FROM = 128  # bytes of payload: below this a message is sent uncompressed
WINDOW_BITS = zlib.MAX_WBITS
TEXT, BINARY, FIN, RSV1 = 0x1, 0x2, 0x80, 0x40
DEFLATE_TAIL = b"\x00\x00\xff\xff"  # what every Z_SYNC_FLUSH ends with; RFC 7692 leaves it out


def accept_offer(offers: list[Any], *, max_message_size: int) -> Any:
    """The accept for the first permessage-deflate offer that allows a 15-bit server window,
    or None (no compression) when there is none. daphne's factory calls this per handshake."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer) and offer.request_max_window_bits in (
            0,
            WINDOW_BITS,
        ):
            return PerMessageDeflateOfferAccept(
                offer,
                request_no_context_takeover=True,
                no_context_takeover=True,
                max_message_size=max_message_size or None,
            )
    return None


def negotiator(max_message_size: int) -> Any:
    """The `perMessageCompressionAccept` option for autobahn's server factory."""
    return partial(accept_offer, max_message_size=max_message_size)


def deflate(payload: bytes) -> bytes:
    """A message's payload compressed on its own, as RFC 7692 puts it in a frame.

    The window is no larger than the message (back-references cannot reach before its start
    anyway) and the hash table in proportion: zlib zeroes both at every start, and with its
    defaults (32 KiB window, memLevel 8: 256 KiB of state) that start cost 60 us, 5x the
    compression of a 1 KiB message, for the same output."""
    window = min(max(len(payload).bit_length(), 9), WINDOW_BITS)
    compressor = zlib.compressobj(
        zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -window, max(window - 6, 1)
    )
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[: -len(DEFLATE_TAIL)]


def deflates(protocol: Any, size: int) -> bool:
    """Whether a message of `size` bytes goes to this socket deflated: the one rule for
    broadcasts and for messages to one socket."""
    return size >= COMPRESS_FROM and compression_of(protocol) is not None


def frame(payload: bytes, *, binary: bool = False, compressed: bool = False) -> bytes:
    """A whole, unmasked frame (a server's), with RSV1 set when `payload` is deflated."""
    first = FIN | (BINARY if binary else TEXT) | (RSV1 if compressed else 0)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


class SharedFrame:
    """One text message's frames for every socket of a worker: as it is, and deflated (built
    at the first socket that negotiated compression)."""

    __slots__ = ("payload", "size", "plain", "_deflated")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.size = len(payload)
        self.plain = frame(payload)
        self._deflated: bytes | None = None

    def deflated(self) -> bytes:
        if self._deflated is None:
            self._deflated = frame(deflate(self.payload), compressed=True)
        return self._deflated

    def send_to(self, protocol: Any) -> None:
        """Write this message to an open socket, deflated if the socket negotiated it."""
        if deflates(protocol, self.size):
            write_frame(protocol, self.deflated())
        else:
            write_frame(protocol, self.plain)


class CompressionWebSocketProtocol:
    """A mixin for daphne's WebSocketProtocol: a message the app sends to this one socket is
    deflated as broadcasts are (`deflate`) when it is large enough and compression was
    negotiated; anything else goes through autobahn uncompressed. So autobahn never builds a
    compressor, and its decompressor lives for one incoming message at a time. `sendMessage`
    overrides autobahn's with its signature (realtime.upstream's WEBSOCKET_PROTOCOL_HOOKS)."""

    def onOpen(self) -> None:
        hold_no_state_between_messages(self)
        super().onOpen()

    def sendMessage(
        self,
        payload: bytes,
        isBinary: bool = False,
        fragmentSize: int | None = None,
        sync: bool = False,
        doNotCompress: bool = False,
    ) -> None:
        size = len(payload)
        if (
            doNotCompress
            or fragmentSize is not None
            or sync
            or 0 < self.maxMessagePayloadSize < size
            or self.state != self.STATE_OPEN
            or not deflates(self, size)
        ):
            # autobahn's own checks and errors (a closed socket, a message over the limit).
            super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress=True)
        else:
            write_frame(self, frame(deflate(payload), binary=isBinary, compressed=True))
