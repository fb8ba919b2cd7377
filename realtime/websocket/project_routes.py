"""A project's own Channels consumers beside /ws/ (`websocket_application(routes=[...])`).

They sit behind the same layers as /ws/ (realtime.routing): origin, TLS, the per-client limits
and the session's user in scope["user"], read once at connect. One layer is theirs alone:
`ClosedOnSignOut`, which puts a signed-in socket in the fan-out's registry of signed-in
sockets (realtime.messaging.sign_outs) once its consumer accepts it, so that a sign-out, a
change of the user's access or the end of the session closes it with 4001 as it closes the
sockets of /ws/. RealtimeConsumer registers its own sockets (with their topics); a project's
consumer knows nothing of the fan-out. docs/existing-project.md ("Your own consumers").
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import redis
from channels.routing import URLRouter
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from realtime.common.close_codes import TRY_AGAIN_LATER
from realtime.messaging.fanout import fanout
from realtime.websocket.sessions import signed_in_session

logger = logging.getLogger("realtime.websocket.project_routes")

REALTIME_PATH = "ws/"  # as URLRouter matches it: without the leading slash
LAYER_LOST_REASON = "The server lost its channel layer"


class SignedInSocket:
    """A project consumer's signed-in socket as the fan-out's sign-outs see it: a scope, and a
    close(). Sends of the consumer after that close are dropped: the socket is gone."""

    def __init__(self, scope: dict[str, Any], send: Any) -> None:
        self.scope = scope
        self._send = send
        self.closed = False

    async def send(self, text_data: str | None = None, **_: Any) -> None:
        """What the sign-outs send a /ws/ socket before closing it (topics it may no longer
        follow): a project consumer has none, and its client speaks its own protocol."""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class ClosedOnSignOut:
    """ASGI middleware: a signed-in socket that its consumer accepted is closed (4001) when its
    session signs out or ends, or its user's access changes; like a signed-in /ws/ socket, it
    is closed with 1013 when the worker cannot hear the channel layer (a sign-out could not
    reach it). Anonymous sockets pass untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        signed_in = signed_in_session(scope) if scope["type"] == "websocket" else None
        if signed_in is None:
            return await self.app(scope, receive, send)
        connected_at = timezone.now()
        socket = SignedInSocket(scope, send)

        async def watched_send(message: dict[str, Any]) -> None:
            if socket.closed:
                return
            if message["type"] == "websocket.close":
                socket.closed = True
                fanout.unregister(socket)
            await send(message)
            if message["type"] == "websocket.accept":
                await self._register(socket, signed_in, connected_at)

        try:
            return await self.app(scope, receive, watched_send)
        finally:
            fanout.unregister(socket)

    @staticmethod
    async def _register(socket: SignedInSocket, signed_in: Any, connected_at: Any) -> None:
        try:
            await fanout.link.ready()
            fanout.link.raise_if_lost()
        except (redis.RedisError, OSError, TimeoutError) as exc:  # LayerLost is an OSError
            logger.warning("Closing a signed-in WebSocket while the channel layer fails: %s", exc)
            await socket.close(TRY_AGAIN_LATER, LAYER_LOST_REASON)
            return
        fanout.sign_outs.add(socket, signed_in, connected_at)


def closed_on_sign_out(route: Any) -> Any:
    """A copy of a route (path() or re_path()) whose consumer, or each consumer of its nested
    URLRouter, is behind ClosedOnSignOut. The project's route objects are left as they were."""
    wrapped = copy.copy(route)
    callback = route.callback
    if isinstance(callback, URLRouter):
        wrapped.callback = URLRouter([closed_on_sign_out(inner) for inner in callback.routes])
    else:
        wrapped.callback = ClosedOnSignOut(callback)
    return wrapped


def serves(routes: list[Any], path: str) -> bool:
    """Whether one of `routes` (a URLRouter's, patterns already prepared by it) matches `path`."""
    for route in routes:
        match = route.pattern.match(path)
        if not match:
            continue
        if not isinstance(route.callback, URLRouter) or serves(route.callback.routes, match[0]):
            return True
    return False


def project_routes(routes: list[Any]) -> list[Any]:
    """The project's routes, each behind ClosedOnSignOut; ImproperlyConfigured for a route
    that would serve /ws/ (realtime's own: it would never be reached)."""
    wrapped = [closed_on_sign_out(route) for route in routes]
    if serves(URLRouter(wrapped).routes, REALTIME_PATH):
        raise ImproperlyConfigured(
            "websocket_application(routes=...): a route matches /ws/, which is realtime's own "
            "endpoint (its consumer answers there, so yours would never run). Mount your "
            'consumer on another path, such as path("game/", ...).'
        )
    return wrapped
