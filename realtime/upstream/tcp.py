"""Twisted's TCP transport and its PROXY protocol wrapper: private state realtime reads.

Twisted has no public "is anything buffered?", no interface for a transport's `bufferSize`,
and its PROXY protocol classes live in a private module. tests/test_upstream.py asserts each.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory

# FileDescriptor's buffer state: bytes held while the socket was not writable, and whether the
# write side was shut. Twisted has no public "is anything buffered?".
TCP_STATE = (
    "_tempDataBuffer",
    "_tempDataLen",
    "dataBuffer",
    "offset",
    "_writeDisconnected",
    "writeSomeData",
)


def send_when_idle(tcp: Any) -> bool:
    """Make a Twisted TCP transport try send() at once while nothing is buffered (as asyncio's
    transports do). Returns False, changing nothing, when this Twisted lacks what it needs.

    Twisted's own write keeps the bytes until epoll says the socket is writable: one epoll_ctl
    to watch it and one to stop, per write. For a broadcast written to thousands of sockets
    that cost more than send() itself (realtime/server/writethrough.py has the profile). What
    the kernel does not take, and every write while anything is buffered, goes through
    Twisted's buffered write, so the order of bytes never changes.
    """
    if not all(hasattr(tcp, name) for name in TCP_STATE):
        return False
    buffered_write = tcp.write

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

    tcp.write = write
    return True


def unsent_bytes(tcp: Any) -> int:
    """How many bytes a Twisted TCP transport holds that the kernel has not taken yet (its
    buffered write's state, TCP_STATE); 0 for a transport without that state."""
    if not all(hasattr(tcp, name) for name in TCP_STATE):
        return 0
    return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen


def limit_write_buffer(tcp: Any, size: int) -> None:
    """Have a Twisted transport pause its streaming producer once more than `size` bytes wait
    unsent. `bufferSize` is the attribute FileDescriptor.write's documentation names for that
    (64 KiB by default), but no interface declares it."""
    if not hasattr(tcp, "bufferSize"):
        raise TypeError(f"{type(tcp).__name__} has no bufferSize: Twisted changed")
    tcp.bufferSize = size


# Twisted's public API is `twisted.protocols.haproxy.proxyEndpoint`, which wraps the factory
# it is given; the `realtime:` endpoint needs the wrapper under TLS (the header comes before the
# ClientHello) and to know the moment the header has been read, to count the connection
# against the per-address cap then (a balancer sends it at once, before the client says
# anything): so the wrapper classes themselves, from their private module.
ProxyHeaderWrapper = HAProxyProtocolWrapper
ProxyHeaderFactory = HAProxyWrappingFactory


def proxy_header_read(wrapper: Any) -> bool:
    """Whether a ProxyHeaderWrapper has read its connection's header (`_proxyInfo`, private)."""
    return wrapper._proxyInfo is not None
