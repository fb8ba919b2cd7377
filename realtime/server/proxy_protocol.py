"""The PROXY protocol (v1 and v2) on the `realtime:` endpoint, for TCP load balancers.

A TCP balancer passes TLS through, so every connection reaches daphne from its address and
every per-address limit would count all users as one. With `proxyProtocol=yes` (`serve
--proxy-protocol`) the balancer's header comes first, and its client address becomes the
connection's peer for everything above (the caps, sign-in throttling, logs). The header is
believed only from a peer in REALTIME_TRUSTED_PROXIES (anyone else is closed before a byte is
read), and a trusted peer's connection without a valid one is closed too (Twisted's parser,
`twisted.protocols.haproxy`, whose classes realtime.upstream names). The layers and their
order, and why: docs/deployment.md ("More than one machine").
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Factory

from realtime.common.rates import LOG_EVERY, OncePerInterval
from realtime.server import prometheus
from realtime.server.address_cap import AddressCap, CapByAddress
from realtime.server.client_address import TrustedProxies
from realtime.upstream import ProxyHeaderFactory, ProxyHeaderWrapper, proxy_header_read

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
        prometheus.refuse("untrusted_proxy")
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


class AdmitAfterHeader(ProxyHeaderWrapper):
    """Twisted's PROXY-header reader, counted by its factory's cap once the header is read:
    then its peer is the client the header names, not the balancer. Refused, the connection
    is aborted."""

    address_key: str | None = None
    admitted = False

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.admitted or not proxy_header_read(self) or self.transport is None:
            return
        self.admitted = True
        self.address_key = self.factory.cap.admit(self.getPeer())
        if self.address_key is None:
            self.transport.abortConnection()


class CappedProxyHeaderFactory(CapByAddress, ProxyHeaderFactory):
    """Reads the PROXY header before `wrappedFactory`'s protocol (TLS), and admits at most
    `cap.limit` connections per address the headers name (realtime/server/address_cap.py)."""

    protocol = AdmitAfterHeader
    admit_later = True


class ProxyProtocolEndpoint:
    """`inner` (plain TCP) with the PROXY header read first, from trusted peers only, and the
    per-address cap applied to the address in it."""

    def __init__(self, inner: IStreamServerEndpoint, trusted: TrustedProxies, cap: AddressCap):
        self.inner, self.trusted, self.cap = inner, trusted, cap

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        headers = CappedProxyHeaderFactory(factory)
        headers.cap = self.cap
        return self.inner.listen(TrustedPeersOnly(headers, self.trusted))
