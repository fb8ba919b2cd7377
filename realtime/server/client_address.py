"""The client's real address, decided once per request or socket by the server, from what it
can trust; every per-address decision and log line reads the result.

Directly (TLS or plain), it is the TCP peer; through a TCP load balancer, the source in its
PROXY header (realtime/server/proxy_protocol.py); through an HTTP proxy in
REALTIME_TRUSTED_PROXIES (or on a Unix socket) with proxy headers trusted, the right-most
`X-Forwarded-For` entry that is not itself a trusted proxy. From anyone else, and on every TLS
connection, the forwarding headers are removed before the application sees them. Counters
bucket the address by `client_key()` (realtime/common/addresses.py). The rules, and why:
docs/security.md ("The client's address").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from realtime.common.addresses import parse_host
from realtime.server import config

SETTING = "REALTIME_TRUSTED_PROXIES"
# Request headers that only a trusted proxy may write; removed from everyone else's requests.
FORWARDED_HEADERS = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-host",
        b"x-forwarded-scheme",
        b"x-real-ip",
        b"forwarded",
    }
)


class TrustedProxies:
    """The addresses and networks whose forwarding headers or PROXY headers are believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = [str(entry).strip() for entry in entries if str(entry).strip()]
        self.networks = []
        for entry in self.entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f"{SETTING}: {entry!r} is not an IP address or network (10.0.0.0/8, ::1)."
                ) from None

    def __contains__(self, host: object) -> bool:
        address = parse_host(str(host)) if host else None
        return address is not None and any(address in net for net in self.networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({self.entries!r})"


def forwarded_client(peer: str, forwarded_for: list[str], trusted: TrustedProxies) -> str:
    """The right-most X-Forwarded-For hop that is not a trusted proxy, walking left from the
    peer (itself trusted). A hop that is no address ends the walk at the last trusted one:
    the proxy that passed it on did not write it."""
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    client = peer
    for hop in reversed(hops):
        address = parse_host(hop)
        if address is None:
            return client
        client = str(address)
        if client not in trusted:
            return client
    return client


@dataclass(frozen=True)
class ClientPolicy:
    """What the server believes about a connection's client; built once per process.

    `trusted`: the proxies named. `forwarded_headers`: whether the project reads forwarding
    headers at all (Django's SECURE_PROXY_SSL_HEADER is set: DJANGO_TRUST_PROXY_HEADERS=1).
    """

    trusted: TrustedProxies
    forwarded_headers: bool

    def believes_headers(self, peer: str, over_tls: bool) -> bool:
        """Whether this connection's X-Forwarded-* headers were written by a trusted proxy."""
        return self.forwarded_headers and not over_tls and peer in self.trusted

    def resolve(self, scope: dict[str, Any], peer: Any, over_tls: bool) -> dict[str, Any]:
        """The scope with the client's real address, and the forwarding headers kept only when
        a trusted proxy wrote them. `peer` is the transport's (after any PROXY header)."""
        host, port = str(getattr(peer, "host", "") or ""), getattr(peer, "port", 0) or 0
        headers = scope.get("headers", [])
        if not host:
            return self._from_unix_socket(scope, headers)
        if self.believes_headers(host, over_tls):
            values = [v.decode("latin1") for n, v in headers if n == b"x-forwarded-for"]
            client = forwarded_client(host, values, self.trusted)
            if client != host:
                port = 0  # the proxy's port to us says nothing of the client's
            return {**scope, "client": [client, port]}
        return {**scope, "client": [host, port], "headers": strip_forwarding(headers)}

    def _from_unix_socket(
        self, scope: dict[str, Any], headers: list[tuple[bytes, bytes]]
    ) -> dict[str, Any]:
        """A Unix socket (daphne -u, --fd) has no peer address; only local processes its file
        lets in can connect, as on loopback: its proxy's headers are believed as a trusted
        proxy's when the project reads them, else removed."""
        if not self.forwarded_headers:
            return {**scope, "headers": strip_forwarding(headers)}
        values = [v.decode("latin1") for n, v in headers if n == b"x-forwarded-for"]
        client = forwarded_client("", values, self.trusted)
        return {**scope, "client": [client, 0]} if client else scope


def strip_forwarding(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers without the ones only a trusted proxy may write."""
    if not any(name in FORWARDED_HEADERS for name, _ in headers):
        return headers
    return [(name, value) for name, value in headers if name not in FORWARDED_HEADERS]


def configured_policy() -> ClientPolicy:
    """The policy the server floor's configuration says (realtime/server/config.py)."""
    settings = config.current()
    return ClientPolicy(TrustedProxies(settings.trusted_proxies), settings.forwarded_headers)
