"""At most N connections at once from one client address on a listener, before TLS or HTTP.

One host holding thousands of idle or slow connections exhausts a worker's descriptors, and
then every new client fails. The WebSocket cap (REALTIME_WS_MAX_PER_CLIENT) counts sockets
the application accepted; this one counts TCP connections as they are accepted, so a
connection past it is closed before it costs a TLS handshake. IPv6 clients are counted by
their /64: one host commonly has a whole /64, and would otherwise have 2**64 addresses.
Per worker process, like the descriptors it protects. Refusals are logged once a minute per
address.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from realtime.common.addresses import client_key
from realtime.common.rates import LOG_EVERY, OncePerInterval
from realtime.server import config, prometheus

logger = logging.getLogger(__name__)


def address_key(address: Any) -> str:
    """The client's IPv4 address, or its IPv6 /64; "" for what has no host (unix sockets)."""
    return client_key(getattr(address, "host", "") or "")


def connections_per_address() -> int:
    """REALTIME_MAX_CONNECTIONS_PER_ADDRESS, as the server floor is configured."""
    return config.current().max_connections_per_address


class AddressCap:
    """Counts open connections per address key; `limit` 0 admits everything."""

    def __init__(self, limit: int, listener: str) -> None:
        self.limit, self.listener = limit, listener
        self.open: Counter[str] = Counter()
        self.should_log = OncePerInterval(LOG_EVERY)

    def admit(self, address: Any) -> str | None:
        """The key to release later, or None: refuse this connection."""
        key = address_key(address)
        if self.limit > 0 and key and self.open[key] >= self.limit:
            prometheus.refuse("per_address_cap")
            if self.should_log(key):
                logger.warning(
                    "Refused connections from %s on the %s listener: %d open already (said "
                    "once a minute per address)", key, self.listener, self.limit,
                )  # fmt: skip
            return None
        self.open[key] += 1
        return key

    def release(self, key: str | None) -> None:
        if key is None:
            return
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]


class CapByAddress:
    """A mixin for Twisted's WrappingFactory (the TLS factory, the PROXY header's): `cap`
    admits each connection when it is built, or, with `admit_later`, its protocol does (once
    the PROXY header has named the client: realtime/server/proxy_protocol.py) and sets the
    `address_key` released here."""

    cap: AddressCap
    admit_later = False

    def buildProtocol(self, addr: Any) -> Any:
        if self.admit_later:
            return super().buildProtocol(addr)
        key = self.cap.admit(addr)
        if key is None:
            return None  # Twisted closes the connection
        protocol = super().buildProtocol(addr)
        if protocol is None:
            self.cap.release(key)
            return None
        protocol.address_key = key
        return protocol

    def unregisterProtocol(self, protocol: Any) -> None:
        super().unregisterProtocol(protocol)
        self.cap.release(getattr(protocol, "address_key", None))
