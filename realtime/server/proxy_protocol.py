"""The PROXY protocol (v1 and v2) on the `realtime:` endpoint, for TCP load balancers.

A TCP balancer (HAProxy in `mode tcp`, nginx's stream module, the cloud network balancers)
passes TLS through untouched, so every connection reaches daphne from the balancer's address,
and every per-address limit would count all users as one. With `proxyProtocol=yes`
(`serve --proxy-protocol`) the balancer writes a header first (HAProxy: `send-proxy-v2`) naming
the client's address, and the connection's peer becomes that address for everything above:
the TCP cap, the WebSocket cap, sign-in throttling, logs.

The header is believed only from a peer in REALTIME_TRUSTED_PROXIES: a connection from anyone
else is closed before a byte is read (otherwise any client reaching the port could name any
address). A connection from a trusted peer that does not start with a valid header is closed
too (Twisted's parser). Parsing is Twisted's own, public `twisted.protocols.haproxy.proxyEndpoint`;
the layers are, outermost first: TCP, this peer check, the PROXY header, TLS, HTTP. A
connection that sends no header at all is dropped by the HTTP layer's first-request deadline
(REALTIME_WS_HANDSHAKE_TIMEOUT), which runs from the moment it connects.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.haproxy import proxyEndpoint

from realtime.quiet_logs import LOG_EVERY, OncePerInterval
from realtime.server import metrics
from realtime.server.client_address import TrustedProxies

logger = logging.getLogger(__name__)


class TrustedPeersOnly(Factory):
    """Builds `wrapped`'s protocol only for a peer in `trusted`; refuses everyone else."""

    def __init__(self, wrapped: IProtocolFactory, trusted: TrustedProxies) -> None:
        self.wrapped, self.trusted = wrapped, trusted
        self.should_log = OncePerInterval(LOG_EVERY)

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", "") or "")
        if host in self.trusted:
            return self.wrapped.buildProtocol(addr)
        metrics.refuse("untrusted_proxy")
        if self.should_log(host):
            logger.warning(
                "Refused a connection from %s: this listener takes PROXY-protocol connections "
                "from REALTIME_TRUSTED_PROXIES %s only (said once a minute per address)",
                host or "an unknown address",
                self.trusted.entries,
            )  # fmt: skip
        return None  # Twisted closes the connection

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        prefix = getattr(self.wrapped, "logPrefix", None)
        return prefix() if callable(prefix) else type(self.wrapped).__name__


class TrustedPeersEndpoint:
    """An endpoint whose factory admits only trusted peers (wraps a plain TCP endpoint)."""

    def __init__(self, inner: IStreamServerEndpoint, trusted: TrustedProxies) -> None:
        self.inner, self.trusted = inner, trusted

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        return self.inner.listen(TrustedPeersOnly(factory, self.trusted))


def with_proxy_protocol(
    inner: IStreamServerEndpoint, trusted: TrustedProxies
) -> IStreamServerEndpoint:
    """`inner` (plain TCP) with the PROXY header read first, from trusted peers only."""
    return proxyEndpoint(TrustedPeersEndpoint(inner, trusted))
