"""Every place realtime relies on a private attribute or undocumented behaviour of Twisted,
daphne, autobahn, channels or pyOpenSSL: here, each with its reason and what it costs.

tests/test_upstream.py is the contract: it asserts the pinned versions and every attribute and
behaviour used here (and the undocumented hooks of daphne's classes that realtime subclasses),
so that an upgrade fails there, loudly, rather than in a fan-out or a TLS handshake.

This module imports only third-party code: both floors (realtime.server and the app) use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from autobahn.websocket.compress import PerMessageDeflate
from channels.consumer import get_handler_name
from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory

# The versions this module was written and measured against (requirements.lock pins them).
PINNED = {
    "autobahn": "26.10.2",
    "channels": "4.3.2",
    "daphne": "4.2.3",
    "pyOpenSSL": "26.4.0",
    "Twisted": "26.10.0",
}

# --- autobahn -------------------------------------------------------------------------------


def write_frame(protocol: Any, frame: bytes) -> None:
    """Write a whole frame's bytes (built once for many sockets) to an open socket: what
    autobahn's `sendData()` does, without its per-call debug log.

    `sendData()` formats a debug line (`hltype()`/`hlval()`, about 3 us) for every frame whether
    or not debug logging is on. In the fan-out that is once per socket per broadcast: measured
    with `make bench` (quick, 5,000 WSS sockets on 2 workers), autobahn's public
    `sendPreparedMessage()` gave 41,130 deliveries/s and p99 136 ms, this way 56,999
    deliveries/s and p99 103 ms. While autobahn has frames queued (`send_queue`, only used by
    its chopped or synchronous sends), `sendData()` keeps them in order.
    """
    if protocol.send_queue:
        protocol.sendData(frame)
    else:
        protocol.transport.write(frame)


def compression_of(protocol: Any) -> Any:
    """The permessage-compress extension an open socket negotiated, or None. autobahn keeps
    it in the private `_perMessageCompress` (its public `websocket_extensions_in_use` is a list
    to search)."""
    return protocol._perMessageCompress


class MessageAtATimeDeflate(PerMessageDeflate):
    """autobahn's permessage-deflate, letting go of its zlib state when each message ends:
    without context takeover the next message starts a new compressor anyway, but autobahn
    holds the last one (about 256 KiB with a 15-bit window) until then. `_compressor` and
    `_decompressor` are its private state."""

    def end_compress_message(self) -> bytes:
        data = super().end_compress_message()
        self._compressor = None
        return data

    def end_decompress_message(self) -> None:
        # Only once it succeeded: on corrupt data autobahn fails the connection (1007) and may
        # still hand this object the rest of the frame, as it would the stock class.
        super().end_decompress_message()
        self._decompressor = None


def hold_no_state_between_messages(protocol: Any) -> bool:
    """Make an open socket's negotiated permessage-deflate a MessageAtATimeDeflate (the same
    object: only what ends a message changes). Returns whether the socket compresses."""
    extension = compression_of(protocol)
    if extension is None:
        return False
    if type(extension) is PerMessageDeflate:
        extension.__class__ = MessageAtATimeDeflate
    return True


def with_factory_options(protocol_class: type, factory: Any) -> type:
    """A subclass of `protocol_class` holding the factory's options as class attributes, so
    that each new connection reads them from the class instead of copying them.

    autobahn's `_connectionMade` copies every option named in `CONFIG_ATTRS` (29 on a server)
    from the factory onto each new protocol instance, and formats the list with `pformat` for
    a debug line whether or not debug logging is on: together 6% of the server's work per
    handshake (py-spy, bench handshakes), and 29 entries in each socket's `__dict__`. An
    instance attribute is only set where the class lacks one, so with the options on the class
    and `CONFIG_ATTRS` empty nothing is copied and only an empty list is formatted. The values
    are the factory's when this is called: after its last `setProtocolOptions()`
    (RealtimeServer calls it when daphne has configured its factory, before the first
    connection)."""
    options = {name: getattr(factory, name) for name in protocol_class.CONFIG_ATTRS}
    # A callable on a class may be bound to each instance (a function, such as the default
    # perMessageCompressionAccept lambda; a functools.partial from Python 3.14): every one is
    # kept as it is on the factory.
    options = {
        name: staticmethod(value) if callable(value) else value for name, value in options.items()
    }
    return type(protocol_class.__name__, (protocol_class,), {**options, "CONFIG_ATTRS": ()})


# --- Twisted's TCP transport ----------------------------------------------------------------

# FileDescriptor's buffer state: bytes held while the socket was not writable, and whether the
# write side was shut. Twisted has no public "is anything buffered?".
TCP_STATE = ("_tempDataBuffer", "dataBuffer", "offset", "_writeDisconnected", "writeSomeData")


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


def limit_write_buffer(tcp: Any, size: int) -> None:
    """Have a Twisted transport pause its streaming producer once more than `size` bytes wait
    unsent. `bufferSize` is the attribute FileDescriptor.write's documentation names for that
    (64 KiB by default), but no interface declares it."""
    if not hasattr(tcp, "bufferSize"):
        raise TypeError(f"{type(tcp).__name__} has no bufferSize: Twisted changed")
    tcp.bufferSize = size


# --- pyOpenSSL and Twisted's CertificateOptions ---------------------------------------------


def set_key_exchange_groups(context: SSL.Context, groups: str) -> None:
    """Offer exactly these key exchange groups on a context, in OpenSSL's list syntax
    ("X25519:prime256v1", with "/" between tuples of equal preference since OpenSSL 3.5).

    pyOpenSSL's only curve setter (`set_tmp_ecdh`) takes a single curve; OpenSSL's own call,
    through the cryptography bindings pyOpenSSL is built on, takes the whole list. It needs
    the context's private `_context` pointer."""
    if Binding.lib.SSL_CTX_set1_curves_list(context._context, groups.encode("ascii")) != 1:
        raise ValueError(f"OpenSSL refused the key exchange groups {groups}.")


def clear_option(options: Any, flag: int) -> None:
    """Clear an OpenSSL option flag that Twisted's CertificateOptions always sets (it keeps
    them in the private `_options` until it builds the context; pyOpenSSL cannot clear a flag
    on a context). Used for OP_CIPHER_SERVER_PREFERENCE under a profile that leaves the cipher
    choice to the client."""
    options._options &= ~flag


# --- daphne's command line ------------------------------------------------------------------


# --- Twisted's PROXY protocol wrapper ---------------------------------------------------------

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


def set_logged_client(protocol: Any, client: list[Any] | None) -> None:
    """Make daphne's own log lines for a request or socket (its access log among them) name
    `client`, the address RealtimeServer decided on. daphne keeps the address it logs in the
    protocol's undocumented `client_addr`, computed before the application is created."""
    protocol.client_addr = client


def use_server_class_under_plain_daphne(server_class: type, *, ours: str) -> bool:
    """Under the plain `daphne` command, make its command line build `server_class`.

    `realtime-daphne` (realtime.server.cli) is daphne's command line with realtime's Server:
    the public way, and what `serve` runs. Plain `daphne` keeps working through this: daphne's
    CLI imports the ASGI application (which calls this) before it reads
    `CommandLineInterface.server_class` to build its Server, an order daphne does not promise.
    Does nothing under `ours` (the module of realtime's own command line) or when the class is
    already in place; returns whether it changed it."""
    cli = sys.modules.get("daphne.cli")
    if cli is None or ours in sys.modules:
        return False
    if issubclass(cli.CommandLineInterface.server_class, server_class):
        return False
    cli.CommandLineInterface.server_class = server_class
    return True


# --- channels -------------------------------------------------------------------------------

# The consumer's dispatch without the thread hop Channels adds (realtime/websocket/consumer.py)
# must name handlers exactly as Channels does: "websocket.receive" -> websocket_receive.
handler_name: Callable[[dict[str, Any]], str] = get_handler_name
