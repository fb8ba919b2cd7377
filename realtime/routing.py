"""The WebSocket side of a project's ASGI application (docs/existing-project.md).

    application = ProtocolTypeRouter(
        {"http": django_asgi_app, "websocket": websocket_application()}
    )

Import this after `get_asgi_application()`: the consumer touches models.
"""

from __future__ import annotations

import sys
from typing import Any

from channels.routing import URLRouter
from django.urls import path

from realtime.broadcasting import maintenance
from realtime.websocket.consumer import RealtimeConsumer
from realtime.websocket.limits import websocket_limits
from realtime.websocket.middleware import (
    RequireTLSMiddleware,
    TransportSchemeMiddleware,
    origin_validator,
)
from realtime.websocket.sessions import websocket_auth

websocket_urlpatterns = [
    path("ws/", RealtimeConsumer.as_asgi()),
]


def websocket_application() -> Any:
    """/ws/ behind the checks (docs/security.md), cheapest refusals first: origin (403), TLS
    (1008), the per-client limits; then the session's user, read once."""
    if "daphne.cli" in sys.modules:
        # Started as plain `daphne ...`: daphne's own Server does not tell whether a WebSocket
        # came over TLS, so its command line builds realtime's Server instead (a no-op under
        # `realtime-daphne`, which builds it anyway: realtime/server/cli.py).
        from realtime.server.daphne_server import install_into_daphne_cli

        install_into_daphne_cli()
    maintenance.schedule()
    return TransportSchemeMiddleware(
        origin_validator(
            RequireTLSMiddleware(websocket_limits(websocket_auth(URLRouter(websocket_urlpatterns))))
        )
    )
