"""Twisted's HTTP/1.1 channel: the undocumented methods realtime's request deadline overrides.

realtime/server/request_deadline.py subclasses HTTPChannel to put total deadlines on a
request's headers and body, and to count the "size" refusals where Twisted answers 400.
tests/test_upstream.py asserts each method's signature and that Twisted calls it as relied on.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import HTTPChannel as TwistedHTTPChannel

# Twisted's channel, the base of DeadlineHTTPChannel.
HTTPChannel = TwistedHTTPChannel

# The methods DeadlineHTTPChannel overrides, and what it relies on each to mean. Only
# connectionMade and connectionLost are IProtocol's; the rest are the channel's own.
HTTP_CHANNEL_HOOKS = {
    "connectionMade": "the connection is accepted: the first request's deadline starts",
    "lineReceived": "(self, line) a request or header line, without its line end",
    "lineLengthExceeded": "(self, line) one line past maxLength: Twisted answers 400",
    "allHeadersReceived": "(self) the headers are in; `length` is the body's (None: chunked)",
    "allContentReceived": "(self) the whole body is in",
    "requestDone": "(self, request) a response is finished; `requests` lists those left",
    "connectionLost": "(self, reason)",
}

# The channel's attributes DeadlineHTTPChannel reads: `callLater` is the HTTPFactory's
# reactor's (Twisted's buildProtocol puts it on every channel it builds).
HTTP_CHANNEL_ATTRIBUTES = ("length", "requests", "totalHeadersSize", "callLater")


def header_line_size(line: bytes) -> int:
    """What one line adds to Twisted's count of a request's header bytes.

    Twisted answers 400 once the bytes of one request's header lines (line ends left out) pass
    `totalHeadersSize`; it keeps that count in the private `_receivedHeaderSize`, reset when
    the request is complete. DeadlineHTTPChannel keeps the same count, with this, to count a
    "size" refusal where Twisted refuses."""
    return len(line)


def transport_owner(transport: Any, channel: Any) -> Any:
    """The protocol a connection's transport now delivers to: `channel`, until daphne hands an
    upgraded connection to its WebSocket by setting the TLS wrapper's `wrappedProtocol`, or a
    TCP transport's `protocol` (attributes no Twisted interface declares)."""
    return getattr(transport, "wrappedProtocol", getattr(transport, "protocol", channel))


def release_from_http_channel(transport: Any) -> None:
    """Unregister the HTTPChannel that served a WebSocket's handshake as its transport's
    producer. Twisted's channel registers itself when the connection is made (to stop reading
    from a client that does not read its responses), and daphne leaves it there when it
    hands the connection to the WebSocket."""
    transport.unregisterProducer()
