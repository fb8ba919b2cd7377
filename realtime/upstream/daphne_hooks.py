"""daphne's Server and command line: the undocumented hooks and order realtime relies on.

RealtimeServer (realtime/server/daphne_server.py) subclasses daphne's Server, takes over its
`ready_callable` to configure the factories daphne builds in run(), replaces their protocols,
and replaces its timeout sweep; plain `daphne` is switched to it. None of that is daphne's
documented API (its command line's `server_class` is). tests/test_upstream.py asserts each.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

# The methods RealtimeServer overrides, and what it relies on each to be.
SERVER_HOOKS = {
    # Called by each new connection (HTTP or WebSocket): RealtimeServer schedules its checks.
    "protocol_connected": "(self, protocol) a new connection, put in `connections`",
    # run() starts it 2 s after start and it reschedules itself; RealtimeServer sweeps only the
    # connections with something due (realtime/server/timeouts.py).
    "timeout_checker": "(self) calls check_timeouts() on every connection, every 2 s",
    # Builds each connection's application from its scope: RealtimeServer adds the scheme,
    # the TLS extension and the client address first.
    "create_application": "(self, protocol, scope)",
}

# daphne's period for timeout_checker (`reactor.callLater(2, self.timeout_checker)`).
TIMEOUT_SWEEP_INTERVAL = 2.0


def call_before_serving(server: Any, prepare: Callable[[], None]) -> None:
    """Have daphne's `Server.run()` call `prepare` once it has built its factories
    (`http_factory`, `ws_factory`), before it listens, then the `ready_callable` it was given.

    `ready_callable` is a documented argument ("called when the server is ready"); that run()
    calls it after building both factories and before the reactor runs is not promised."""
    given = server.ready_callable

    def ready() -> None:
        prepare()
        if given:
            given()

    server.ready_callable = ready


def replace_protocols(server: Any, ws: type, http: Callable[[], Any] | None = None) -> None:
    """Make daphne's factories build `ws` for each WebSocket and, unless None, `http` for each
    HTTP connection. `ws_factory` (autobahn's) and `http_factory` (Twisted's HTTPFactory, whose
    `protocol` may be any callable) are daphne's undocumented attributes, set in run()."""
    server.ws_factory.protocol = ws
    if http is not None:
        server.http_factory.protocol = http


def set_logged_client(protocol: Any, client: list[Any] | None) -> None:
    """Make daphne's own log lines for a request or socket (its access log among them) name
    `client`, the address RealtimeServer decided on. daphne keeps the address it logs in the
    protocol's undocumented `client_addr`, computed before the application is created."""
    protocol.client_addr = client


def access_log_stream(action_logger: Any) -> Any:
    """The stream a daphne AccessLogGenerator writes to (its undocumented `stream`): stdout
    for the one daphne's command line makes without --access-log."""
    return action_logger.stream


def started_by_daphne_cli() -> bool:
    """Whether daphne's command line (plain `daphne` or `realtime-daphne`) runs this process:
    it has imported `daphne.cli`, which nothing else of daphne imports."""
    return "daphne.cli" in sys.modules


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
