"""A project's ASGI application with a Channels consumer of its own beside /ws/, as
docs/existing-project.md shows it; served by tests/test_own_consumers.py (and
tests/test_versions_e2e.py) in a real server process."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.urls import path  # noqa: E402

from realtime.routing import websocket_application  # noqa: E402


class WhoAmIConsumer(AsyncJsonWebsocketConsumer):
    """Echoes what it is sent, with the user the session layer put in its scope."""

    async def connect(self) -> None:
        await self.accept()

    async def receive_json(self, content, **kwargs) -> None:
        user = self.scope["user"]
        username = user.get_username() if user.is_authenticated else None
        await self.send_json({"user": username, "echo": content})


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_application(routes=[path("whoami/", WhoAmIConsumer.as_asgi())]),
    }
)
