"""The Channels tutorial's chat pattern, as the fan-out peer of bench/run.py.

    DJANGO_SETTINGS_MODULE=bench.peers.tutorial_settings TUTORIAL_REDIS_URL=redis://... \
        daphne -e realtime:PORT:privateKey=KEY:certKey=CERT:reusePort=yes \
        bench.peers.tutorial_asgi:application

Every socket joins the group "chat" (the tutorial's `group_add` in `connect`); a broadcast is
one `group_send` of `{"type": "chat.message", "message": TEXT}` on the core
`RedisChannelLayer`, and each consumer's `chat_message` handler serializes its own copy with
`json.dumps` and sends it. That is the tutorial's code (docs "Tutorial Part 2/3"), with the
room fixed to one name.
"""

from __future__ import annotations

import json
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peers.tutorial_settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "chat"


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        message = json.loads(text_data or "{}").get("message", "")
        await self.channel_layer.group_send(GROUP, {"type": "chat.message", "message": message})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"message": event["message"]}))


urlpatterns: list[Any] = []  # ROOT_URLCONF: the tutorial serves no page here

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter([path("ws/", ChatConsumer.as_asgi())]))
        ),
    }
)
