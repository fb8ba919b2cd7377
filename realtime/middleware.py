"""ASGI middleware that gives every WebSocket scope a `scheme` the project can rely on.

The scheme is "wss" only when the socket arrived over TLS (as RealtimeServer reports it from
the transport), or when Django is told to trust a TLS-terminating proxy
(SECURE_PROXY_SSL_HEADER, set by DJANGO_TRUST_PROXY_HEADERS=1) and that proxy says https.
A server that does not report the scheme at all gets "ws": unknown is never taken as secure.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

logger = logging.getLogger("realtime.middleware")

_warned_missing_scheme = False


def proxy_scheme(scope: dict[str, Any]) -> str | None:
    """The scheme a trusted proxy claims, or None when none is trusted or none is claimed."""
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if not proxy_header:
        return None
    meta_name, secure_value = proxy_header
    wanted = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin1")
    for name, value in scope.get("headers", []):
        if name == wanted:
            # As Django's HttpRequest.scheme: the first value decides.
            first = value.decode("latin1").split(",")[0].strip()
            return "wss" if first == secure_value else "ws"
    return None


def server_scheme(scope: dict[str, Any]) -> str:
    """The scheme the server saw on the transport; "ws" (and one warning) when it did not say."""
    global _warned_missing_scheme
    scheme = scope.get("scheme")
    if scheme in ("ws", "wss"):
        return scheme
    if not _warned_missing_scheme:
        _warned_missing_scheme = True
        logger.warning(
            "The ASGI server did not put a scheme in the WebSocket scope, so no socket can be "
            "known to be secure. Run daphne through project.asgi, runserver or serve, which "
            "use realtime.server.RealtimeServer."
        )
    return "ws"


class TransportSchemeMiddleware:
    """Sets scope["scheme"] to "wss" or "ws" from the transport or a trusted proxy."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            scheme = proxy_scheme(scope) or server_scheme(scope)
            scope = {**scope, "scheme": scheme}
        return await self.app(scope, receive, send)
