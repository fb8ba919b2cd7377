"""realtime's daphne Server: WebSocket scopes that say whether they came over TLS.

daphne 4.2 leaves `scheme` out of the WebSocket scope (the ASGI default is "ws", even over
TLS). This Server sets `scheme` from the transport the socket arrived on and, over TLS, the
ASGI TLS extension (docs/tls.md). It also caps the message size at
REALTIME_WS_MAX_MESSAGE_SIZE and answers an oversized message with 1009 rather than a dropped
connection, and its timeout sweep visits only the connections with something due
(realtime/server/timeouts.py). `runserver`, `serve`, `realtime-daphne` and plain `daphne` (through
`install_into_daphne_cli()`) use it; the daphne internals it overrides go through
realtime.upstream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

# First: daphne's Server module installs Twisted's asyncio reactor, which must happen before
# twisted.internet.reactor is imported (daphne says so too).
import daphne.server  # noqa: F401
from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import ISSLTransport
from twisted.web import http

from realtime.common.close_codes import GOING_AWAY
from realtime.server import config, hooks
from realtime.server.access_log import log_access, writes_to_stdout
from realtime.server.client_address import configured_policy
from realtime.server.collector import tune_for_serving
from realtime.server.compression import CompressionWebSocketProtocol, negotiator
from realtime.server.frame_budget import FrameBudget
from realtime.server.frames import EXTENSION, WebSocketFrames
from realtime.server.listeners import notify_ready
from realtime.server.request_deadline import channel_with_deadline
from realtime.server.timeouts import SWEEP_INTERVAL, TimeoutSchedule
from realtime.server.unsent import UnsentCap
from realtime.server.writethrough import WriteThroughWebSocketProtocol
from realtime.upstream import (
    Server,
    WebSocketProtocol,
    call_before_serving,
    replace_protocols,
    set_logged_client,
    use_server_class_under_plain_daphne,
    with_factory_options,
)

logger = logging.getLogger("realtime.server.daphne_server")

SHUTDOWN_CLOSE_WAIT = 2.0  # seconds for clients to answer the close frames


def transport_tls_info(transport: Any) -> dict[str, str] | None:
    """The TLS version and cipher of a Twisted transport, or None when it is not TLS."""
    if not ISSLTransport.providedBy(transport):
        return None
    connection = transport.getHandle()
    return {
        "tls_version": connection.get_protocol_version_name(),
        "cipher_suite": connection.get_cipher_name(),
    }


def capped_size(requested: int, ceiling: int) -> int:
    """A message size limit no larger than the project's ceiling (0 means "no limit" to daphne)."""
    return ceiling if requested <= 0 else min(requested, ceiling)


def realtime_websocket_protocol(frame_rate: float, frame_burst: int, max_unsent: int) -> type:
    """The WebSocket protocol RealtimeServer serves with: close codes as the app sends them
    (closing.py), writes through (writethrough.py), a budget for every frame (frame_budget.py),
    a cap on unsent bytes (unsent.py) and compression without state between messages
    (compression.py)."""
    attributes = {
        "frame_rate": float(frame_rate),
        "frame_burst": int(frame_burst),
        "max_unsent": int(max_unsent),
    }
    bases = (CompressionWebSocketProtocol, FrameBudget, UnsentCap, WriteThroughWebSocketProtocol)
    return type("RealtimeWebSocketProtocol", bases, attributes)


class RealtimeServer(Server):
    """daphne's Server, with the WebSocket scheme and TLS details put into the scope."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # No `Server: daphne` banner on responses and handshakes (daphne's default name; an
        # explicit --server-name is kept): it tells a scanner which CVEs to try.
        if self.server_name == "daphne":
            self.server_name = ""
        # What the app configured (realtime/server/config.py), read once for this process.
        self.config = cfg = config.current()
        # Plain `daphne` passes its own 1 MiB default; the project's setting is the ceiling.
        ceiling = cfg.ws_max_message_size
        self.websocket_max_message_size = capped_size(self.websocket_max_message_size, ceiling)
        self.websocket_max_frame_size = capped_size(self.websocket_max_frame_size, ceiling)
        # The handshake (daphne: 5 s under `daphne`, 5 s and 20 s under runserver) is bounded
        # by REALTIME_WS_HANDSHAKE_TIMEOUT too; daphne applies it when it builds its factory.
        handshake = cfg.ws_handshake_timeout
        self.websocket_handshake_timeout = capped_size(self.websocket_handshake_timeout, handshake)
        self.websocket_connect_timeout = capped_size(self.websocket_connect_timeout, handshake)
        # Registered before daphne's own trigger (in run()), so that the close frames go out
        # before daphne cancels the applications.
        reactor.addSystemEventTrigger("before", "shutdown", self.close_websockets)
        if writes_to_stdout(self.action_logger):  # daphne's --access-log FILE keeps its own
            self.action_logger = log_access
        self.timeouts = TimeoutSchedule()
        # Who the client is, from the transport and the proxies trusted (client_address.py).
        self.client_policy = configured_policy()
        # Once daphne has built its factories, before it listens (realtime.upstream).
        call_before_serving(self, self._before_serving)

    def _before_serving(self) -> None:
        # Send a close frame (1009, 1002, ...) on protocol errors instead of dropping TCP.
        # allowNullOrigin is repeated because autobahn resets it to False on every call; the
        # origin check belongs to Channels' validator, which refuses "null" with 403.
        options: dict[str, Any] = {"failByDrop": False, "allowNullOrigin": True}
        cfg = self.config
        if cfg.ws_compression:
            # permessage-deflate for clients that offer it (browsers do); an incoming message
            # inflates to at most the message size limit (realtime/server/compression.py).
            options["perMessageCompressionAccept"] = negotiator(self.websocket_max_message_size)
        self.ws_factory.setProtocolOptions(**options)
        # Close codes such as 1008 and 1013, and their reasons, as the application sends them;
        # once open, frames go to the socket at once (realtime/server/writethrough.py).
        protocol = realtime_websocket_protocol(
            cfg.ws_frame_rate, cfg.ws_frame_burst, cfg.ws_max_unsent_bytes
        )
        # A connection gets REALTIME_WS_HANDSHAKE_TIMEOUT seconds of silence (Twisted's HTTP idle
        # timer, 60 s by default; off while a request is handled or upgraded) and as many in
        # total to finish TLS and send its first request's headers (realtime/request_deadline).
        self.http_factory.timeOut = cfg.ws_handshake_timeout
        deadline = None
        if not http.H2_ENABLED:
            deadline = channel_with_deadline(cfg.ws_handshake_timeout, cfg.http_body_min_rate)
        # The factory's options, final now, read from the class by each connection.
        replace_protocols(self, ws=with_factory_options(protocol, self.ws_factory), http=deadline)
        if cfg.channel_layer:
            logger.info(cfg.channel_layer)
        self._periodic = [self._start_periodic(w, i) for w, i in hooks.periodic.items()]
        tune_for_serving(cfg.gc_threshold)
        # Once the reactor runs, this process serves: `serve`'s supervisor may stop the one
        # it replaces (realtime/server/listeners.py).
        reactor.callWhenRunning(notify_ready)

    def protocol_connected(self, protocol: Any) -> None:
        super().protocol_connected(protocol)
        self.timeouts.add(protocol, time.time())

    def timeout_checker(self) -> None:
        """daphne's periodic timeout check (run() starts it), on the connections with a check
        due rather than on all of them."""
        self.timeouts.sweep(
            self.connections, time.time(), self.ping_interval, self.websocket_timeout
        )
        reactor.callLater(SWEEP_INTERVAL, self.timeout_checker)

    def open_websockets(self) -> list[WebSocketProtocol]:
        return [
            protocol
            for protocol in self.connections
            if isinstance(protocol, WebSocketProtocol) and protocol.state == protocol.STATE_OPEN
        ]

    def close_websockets(self) -> defer.Deferred[None]:
        """On shutdown (SIGTERM), close every WebSocket with 1001 (going away) and wait a
        moment for the close handshakes, so clients know to reconnect (daphne#177)."""
        sockets = self.open_websockets()
        for protocol in sockets:
            # sendCloseFrame: autobahn's public sendClose() refuses codes other than 1000 and
            # 3000-4999 (daphne sends its 1011 the same way).
            protocol.sendCloseFrame(code=GOING_AWAY, reasonUtf8=b"server shutting down")
        logger.info(
            "Closing %d WebSocket(s) with %d before shutting down", len(sockets), GOING_AWAY
        )
        deadline = time.monotonic() + SHUTDOWN_CLOSE_WAIT

        def wait(done: defer.Deferred[None]) -> None:
            if not self.open_closing(sockets) or time.monotonic() > deadline:
                done.callback(None)
            else:
                reactor.callLater(0.05, wait, done)

        done: defer.Deferred[None] = defer.Deferred()
        wait(done)
        return done

    @staticmethod
    def open_closing(sockets: list[WebSocketProtocol]) -> list[WebSocketProtocol]:
        return [p for p in sockets if p.state != p.STATE_CLOSED]

    @staticmethod
    def _start_periodic(work: hooks.Periodic, interval: float) -> task.LoopingCall:
        """Run the app's periodic work (realtime.server.hooks) in the event loop."""

        def run() -> defer.Deferred[None]:
            return defer.Deferred.fromFuture(asyncio.ensure_future(work())).addErrback(
                lambda failure: logger.error(
                    "Periodic %s failed: %s", work.__qualname__, failure.getErrorMessage()
                )
            )

        looping = task.LoopingCall(run)
        looping.start(interval, now=False)
        return looping

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        tls = transport_tls_info(protocol.transport)
        # The client's address as the transport and the trusted proxies say, never as the
        # request alone says (daphne's --proxy-headers takes the first X-Forwarded-For entry).
        scope = self.client_policy.resolve(scope, protocol.transport.getPeer(), tls is not None)
        set_logged_client(protocol, scope.get("client"))
        if scope["type"] == "http":
            scope["scheme"] = "https" if tls else "http"
        elif scope["type"] == "websocket":
            scope["scheme"] = "wss" if tls else "ws"
            extensions = scope.setdefault("extensions", {})
            if tls:
                extensions["tls"] = tls
            # Lets the app write a broadcast frame, built once, to this socket instead of
            # through a consumer task per socket (the fan-out fast path).
            extensions[EXTENSION] = WebSocketFrames(protocol)
        return super().create_application(protocol, scope)


def install_into_daphne_cli() -> None:
    """Under plain `daphne`, build RealtimeServer too (`realtime-daphne` needs no such step:
    realtime.server.cli)."""
    if use_server_class_under_plain_daphne(RealtimeServer, ours="realtime.server.cli"):
        logger.info(
            "Started by plain `daphne`: serving with realtime's Server all the same. "
            "`realtime-daphne` takes the same options and needs no switch."
        )
