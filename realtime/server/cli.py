"""`realtime-daphne`: daphne's command line, serving with realtime's Server.

    realtime-daphne -e realtime:8443:privateKey=KEY:certKey=CERT myproject.asgi:application
    python -m realtime.server ...   (the same; what `manage.py serve` runs in its workers)

Every option of `daphne` works the same. The difference is the Server it builds:
realtime.server.daphne_server.RealtimeServer (WebSocket scopes that say whether they came over
TLS, the fan-out's frame extension, close codes as the application sends them, the handshake
deadline). daphne's documented way to change it is a subclass with its own `server_class`.
Plain `daphne` still works: realtime.upstream switches its server class when the application
is imported, which relies on an order daphne does not promise.
"""

from __future__ import annotations

from daphne.cli import CommandLineInterface

from realtime.server.daphne_server import RealtimeServer


class RealtimeCommandLine(CommandLineInterface):
    """daphne's command line with RealtimeServer."""

    description = "Django HTTP/WebSocket server (daphne with realtime's Server)"
    server_class = RealtimeServer


def main() -> None:
    RealtimeCommandLine.entrypoint()
