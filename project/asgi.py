"""The ASGI application: HTTP to Django, WebSockets to the realtime app's stack.

Exactly the adoption steps of docs/existing-project.md, plus a clear message for a settings
error from the environment. Served by `daphne -e realtime:...`, `manage.py runserver [--tls]`
and `manage.py serve`.
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

from channels.routing import ProtocolTypeRouter  # noqa: E402

from realtime.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_application()})
