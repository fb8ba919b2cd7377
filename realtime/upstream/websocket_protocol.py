"""autobahn's and daphne's WebSocket protocol: what realtime reaches into or overrides.

daphne's WebSocketProtocol (an autobahn server protocol) is the base of realtime's own
(realtime/server/daphne_server.py builds it from mixins); the methods listed in
WEBSOCKET_PROTOCOL_HOOKS are overridden or called there although neither project documents
them for that. tests/test_upstream.py asserts each name, signature and behaviour used here.
"""

from __future__ import annotations

from typing import Any

from autobahn.util import encode_truncate as autobahn_encode_truncate
from autobahn.websocket.compress import PerMessageDeflate
from daphne.ws_protocol import WebSocketProtocol as DaphneWebSocketProtocol

# daphne's protocol, the base of realtime's (closing.py, compression.py, writethrough.py and
# the timeout sweep's isinstance check, timeouts.py).
WebSocketProtocol = DaphneWebSocketProtocol

# What realtime overrides or calls on it, and why each is upstream's undocumented behaviour:
WEBSOCKET_PROTOCOL_HOOKS = {
    # daphne's Server hands each ASGI message the application sends to this method; closing.py
    # sends `websocket.close` itself (daphne's passes only 1000/3000-4999 and drops the reason).
    "handle_reply": "daphne: (self, message), called by Server.handle_reply",
    # compression.py deflates a message to one socket as broadcasts are, else calls autobahn's.
    "sendMessage": "autobahn: (self, payload, isBinary, fragmentSize, sync, doNotCompress)",
    # autobahn's internal close: any code a server may send (its public sendClose refuses
    # 1001, 1008, 1013...); closing.py, frame_budget.py and RealtimeServer's shutdown use it.
    "sendCloseFrame": "autobahn: (self, code, reasonUtf8, isReply)",
    # daphne's per-connection timeouts, called by its Server.timeout_checker every 2 s; the
    # sweep (timeouts.py) calls it only on the connections with something due.
    "check_timeouts": "daphne: (self), pings past ping_interval, closes past websocket_timeout",
}

# autobahn's helper truncating UTF-8 to a byte count at a character boundary (closing.py: a
# close reason holds 123 bytes); in autobahn.util, not in its documented API.
encode_truncate = autobahn_encode_truncate


def next_check_due(protocol: Any, ping_interval: float, timeout: float) -> float:
    """When daphne's `check_timeouts()` next has something to do for an open WebSocket: its
    next keep-alive ping or its end (realtime/server/timeouts.py).

    daphne stamps the undocumented `last_ping` (time.time(), at connect, at each ping it sends
    and at each message received) and `socket_opened` (time.time(), at connect); it pings once
    more than `ping_interval` has passed since `last_ping`, and closes once more than
    `websocket_timeout` has passed since `socket_opened` (never when that is negative)."""
    when = protocol.last_ping + ping_interval
    if timeout >= 0:
        when = min(when, protocol.socket_opened + timeout)
    return when


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
