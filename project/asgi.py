"""The ASGI application: HTTP to Django, WebSockets through origin, TLS and limit checks and
auth to Channels (docs/security.md).

Served by `daphne -e ssl:...`, `manage.py runserver [--tls]` and `manage.py serve`.
"""

from __future__ import annotations

import os
import sys

from django.core.asgi import get_asgi_application

from project.env import SettingsError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
try:
    # Set up Django (and its app registry) before importing anything that touches models.
    django_asgi_app = get_asgi_application()
except SettingsError as exc:
    sys.exit(f"Configuration error: {exc}")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from realtime.limits import websocket_limits  # noqa: E402
from realtime.middleware import (  # noqa: E402
    RequireTLSMiddleware,
    TransportSchemeMiddleware,
    origin_validator,
)
from realtime.routing import websocket_urlpatterns  # noqa: E402
from realtime.sessions import websocket_auth  # noqa: E402

if "daphne.cli" in sys.modules:
    # Started as `daphne ...`: daphne's own Server does not tell whether a WebSocket came over
    # TLS, so its command line builds realtime's Server instead (see realtime/server.py).
    from realtime.server import install_into_daphne_cli

    install_into_daphne_cli()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Cheapest refusals first: origin (403), TLS (1008), then the per-client limits.
        "websocket": TransportSchemeMiddleware(
            origin_validator(
                RequireTLSMiddleware(
                    websocket_limits(websocket_auth(URLRouter(websocket_urlpatterns)))
                )
            )
        ),
    }
)
