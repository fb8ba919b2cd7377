"""The WebSocket side of a project's ASGI application (docs/existing-project.md).

    application = ProtocolTypeRouter(
        {"http": django_asgi_app, "websocket": websocket_application()}
    )

A project's own Channels consumers go beside /ws/, behind the same layers:
`websocket_application(routes=[path("game/", GameConsumer.as_asgi())])`.

Import this after `get_asgi_application()`: the consumer touches models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from channels.routing import URLRouter
from django.core.exceptions import ImproperlyConfigured
from django.urls import path, re_path

from realtime.checks import check_settings
from realtime.messaging import maintenance
from realtime.upstream import started_by_daphne_cli
from realtime.websocket.consumer import RealtimeConsumer
from realtime.websocket.limits import websocket_limits
from realtime.websocket.middleware import (
    RequireTLSMiddleware,
    TransportSchemeMiddleware,
    origin_validator,
)
from realtime.websocket.project_routes import project_routes
from realtime.websocket.sessions import websocket_auth
from realtime.websocket.unknown import refuse_unknown_path

websocket_urlpatterns = [
    path("ws/", RealtimeConsumer.as_asgi()),
    re_path(r"", refuse_unknown_path),  # last: any other path gets 403, not a traceback
]


def urlpatterns_with(routes: Sequence[Any]) -> list[Any]:
    """/ws/ first, then the project's routes (each closed on sign-out), then the refusal."""
    first, *rest = websocket_urlpatterns
    return [first, *project_routes(list(routes)), *rest]


def refuse_wrong_settings() -> None:
    """The system checks (realtime/checks.py), also where no management command runs them:
    under daphne or realtime-daphne a wrong REALTIME_* value stops the server at start."""
    errors = [error for error in check_settings() if error.is_serious()]
    if errors:
        raise ImproperlyConfigured("\n".join(f"{error.id}: {error.msg}" for error in errors))


def websocket_application(routes: Sequence[Any] = ()) -> Any:
    """/ws/, and the project's own consumers in `routes` (path() or re_path(), as for
    Channels' URLRouter), behind the checks (docs/security.md), cheapest refusals first:
    origin (403), TLS (1008), the per-client limits; then the session's user, read once.
    A route that matches /ws/ is an ImproperlyConfigured error."""
    if started_by_daphne_cli():
        # Started as plain `daphne ...`: daphne's own Server does not tell whether a WebSocket
        # came over TLS, so its command line builds realtime's Server instead (a no-op under
        # `realtime-daphne`, which builds it anyway: realtime/server/cli.py).
        from realtime.server.daphne_server import install_into_daphne_cli

        install_into_daphne_cli()
    refuse_wrong_settings()
    router = URLRouter(urlpatterns_with(routes))
    maintenance.schedule()
    return TransportSchemeMiddleware(
        origin_validator(RequireTLSMiddleware(websocket_limits(websocket_auth(router))))
    )
