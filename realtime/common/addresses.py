"""A client's address, and the key every per-address counter buckets it by.

`client_key()` is the one bucket: an IPv4 address as it is, an IPv6 one as its /64 (one host
commonly holds a whole /64). The server floor counts TCP connections by it
(realtime/server/address_cap.py); the app counts WebSockets, replays, sign-ins and API failures
by it, from the client RealtimeServer put in the ASGI scope (realtime/server/client_address.py
decides who that is).
"""

from __future__ import annotations

import ipaddress
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_host(text: str) -> Address | None:
    """An address from a peer or an X-Forwarded-For entry ("1.2.3.4", "1.2.3.4:56", "[::1]:56",
    "fe80::1%eth0"); IPv4-mapped IPv6 as IPv4; None when it is no address."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_key(host: str) -> str:
    """The bucket an address counts in: IPv4 as it is, IPv6 as its /64; "" for no address."""
    address = parse_host(host) if host else None
    if address is None:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def scope_client_key(scope: dict[str, Any]) -> str:
    """The bucket of an ASGI scope's client (RealtimeServer put the real address there);
    "" when it has none (a Unix socket)."""
    client = scope.get("client")
    return client_key(str(client[0])) if client else ""


def request_client_key(meta: dict[str, Any]) -> str:
    """The bucket of a Django request's client, from its META (REMOTE_ADDR is the scope's
    client under RealtimeServer); "" when it has none."""
    return client_key(str(meta.get("REMOTE_ADDR") or ""))
