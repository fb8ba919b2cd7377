"""A total deadline for a connection's first request: TLS and all its headers within N seconds.

Twisted's HTTP channel only has an idle timer (RealtimeServer sets it to
REALTIME_WS_HANDSHAKE_TIMEOUT): every byte received starts it again, so a client trickling its
request a byte at a time ("slowloris") holds the connection for as long as it likes, and many
such clients hold many. DeadlineHTTPChannel also gives each connection that many seconds in
total, from the moment it is accepted, to finish TLS and send every header of its first
request; when they have all arrived (`allHeadersReceived`) the deadline is lifted, and the
request, its body, a WebSocket it opens and the requests that follow on the same connection
have the limits they had before. A connection past the deadline is aborted (no response: a
client that slow would not read one either).

RealtimeServer installs it as daphne's HTTP protocol when Twisted's HTTP/2 is not available,
as with this project's requirements. With HTTP/2 installed (the `http2` extra), Twisted picks
the protocol per connection and the stock one stays: only the idle timer applies then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.web.http import HTTPChannel

logger = logging.getLogger(__name__)


class DeadlineHTTPChannel(HTTPChannel):
    """Twisted's HTTP/1.1 channel, aborted if its first request's headers are late."""

    first_request_timeout = 10.0

    def connectionMade(self) -> None:
        super().connectionMade()
        # callLater: the HTTPFactory's reactor, which Twisted puts on every channel it builds.
        self.first_request_deadline = self.callLater(
            self.first_request_timeout, self.first_request_too_slow
        )

    def allHeadersReceived(self) -> None:
        self._lift_deadline()
        super().allHeadersReceived()

    def connectionLost(self, reason: Any) -> None:
        self._lift_deadline()
        super().connectionLost(reason)

    def first_request_too_slow(self) -> None:
        self.first_request_deadline = None
        logger.info(
            "Dropped a connection from %s: no complete request within %g s",
            self.transport.getPeer(),
            self.first_request_timeout,
        )
        self.transport.abortConnection()

    def _lift_deadline(self) -> None:
        deadline = getattr(self, "first_request_deadline", None)
        if deadline is not None and deadline.active():
            deadline.cancel()
        self.first_request_deadline = None


def channel_with_deadline(timeout: float) -> Callable[[], DeadlineHTTPChannel]:
    """A `protocol` for an HTTPFactory: DeadlineHTTPChannel with `timeout` seconds."""

    def build() -> DeadlineHTTPChannel:
        channel = DeadlineHTTPChannel()
        channel.first_request_timeout = timeout
        return channel

    return build
