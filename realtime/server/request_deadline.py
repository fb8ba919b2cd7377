"""Total deadlines for each request's headers and body, not only an idle timer.

Twisted's HTTP channel only has an idle timer, which every byte received starts again, so a
client trickling its request ("slowloris") holds the connection as long as it likes.
DeadlineHTTPChannel gives each request REALTIME_WS_HANDSHAKE_TIMEOUT seconds in total for its
headers (the first from the moment the connection is accepted, TLS included), and its body that
plus its length at REALTIME_HTTP_BODY_MIN_RATE bytes a second; past a deadline the connection is
aborted. RealtimeServer installs it as daphne's HTTP protocol when Twisted's HTTP/2 is not
installed. It overrides Twisted's undocumented hooks (realtime.upstream's HTTP_CHANNEL_HOOKS).
Why, and what it bounds: docs/security.md ("Descriptors", "Limits").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from realtime.server import prometheus
from realtime.server.config import SERVER_DEFAULTS
from realtime.upstream import HTTPChannel, header_line_size, transport_owner

logger = logging.getLogger(__name__)


UNKNOWN_BODY_LENGTH = 1024 * 1024  # a chunked body is given the time of 1 MiB


class DeadlineHTTPChannel(HTTPChannel):
    """Twisted's HTTP/1.1 channel, aborted if a request's headers or body are late."""

    first_request_timeout = float(SERVER_DEFAULTS.ws_handshake_timeout)
    body_min_rate = float(SERVER_DEFAULTS.http_body_min_rate)  # bytes a second; 0: no deadline
    deadline = None
    header_bytes = 0  # of the request being received (the metrics' "size" refusals)
    size_counted = False  # once per connection, however its headers overflow
    tls_counted = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm(self.first_request_timeout, "no complete request headers")

    def lineReceived(self, line: bytes) -> None:
        self.header_bytes += header_line_size(line)
        if self.header_bytes > self.totalHeadersSize:  # Twisted answers 400
            self._count_size_refusal()
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> Any:
        self._count_size_refusal()
        return super().lineLengthExceeded(line)

    def _count_size_refusal(self) -> None:
        if not self.size_counted:
            self.size_counted = True
            prometheus.refuse("size")

    def allHeadersReceived(self) -> None:
        self._lift_deadline()
        self.header_bytes = 0
        if not self.tls_counted:  # the first request: its connection's TLS is established
            self.tls_counted = True
            prometheus.count_tls_connection(self.transport)
        super().allHeadersReceived()
        if self.length != 0 and self.body_min_rate > 0:
            length = self.length if self.length is not None else UNKNOWN_BODY_LENGTH
            seconds = self.first_request_timeout + length / self.body_min_rate
            self._arm(seconds, f"a body of {length} bytes not received")

    def allContentReceived(self) -> None:
        self._lift_deadline()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        # The next request on this connection gets its own deadline for its headers.
        if self._owns_transport() and not self.requests:
            self._arm(self.first_request_timeout, "no complete request headers")

    def connectionLost(self, reason: Any) -> None:
        self._lift_deadline()
        super().connectionLost(reason)

    def _owns_transport(self) -> bool:
        """False once a WebSocket took the connection over (daphne hands it the transport)."""
        transport = self.transport
        if transport is None:
            return False
        return transport_owner(transport, self) is self

    def _arm(self, seconds: float, what: str) -> None:
        self._lift_deadline()
        # callLater: the HTTPFactory's reactor, which Twisted puts on every channel it builds.
        self.deadline = self.callLater(seconds, self._too_slow, seconds, what)

    def _too_slow(self, seconds: float, what: str) -> None:
        self.deadline = None
        if not self._owns_transport():
            return
        logger.info(
            "Dropped a connection from %s: %s within %g s", self.transport.getPeer(), what, seconds
        )
        prometheus.refuse("deadline")
        self.transport.abortConnection()

    def _lift_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None


def channel_with_deadline(
    timeout: float, body_min_rate: float = DeadlineHTTPChannel.body_min_rate
) -> Callable[[], DeadlineHTTPChannel]:
    """A `protocol` for an HTTPFactory: DeadlineHTTPChannel with `timeout` seconds for headers
    and `body_min_rate` bytes a second for bodies (0: no body deadline)."""

    def build() -> DeadlineHTTPChannel:
        channel = DeadlineHTTPChannel()
        channel.first_request_timeout = timeout
        channel.body_min_rate = body_min_rate
        return channel

    return build
