"""Sessions on WebSockets: read once at connect, and closing a session's sockets on sign-out.

`websocket_auth()` is Channels' AuthMiddlewareStack without the session save check it makes
on every message a socket sends: a socket here never changes its session (signing in and out
happen over HTTPS, and a WebSocket could not send the cookie anyway), so it only loads it.

Channels reads the session's user once, when a socket opens, so a socket would stay signed in
after its session signed out. Django's `user_logged_out` signal therefore sends one
`realtime.logout` event to the group every worker's fan-out joins (realtime.delivery), naming
the session by a hash of its key (the key itself is a credential and never goes to the channel
layer); each worker closes its sockets of that session with 4001. The page's client reconnects
and is then anonymous.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.auth import AuthMiddleware
from channels.layers import get_channel_layer
from channels.sessions import CookieMiddleware, InstanceSessionWrapper

logger = logging.getLogger("realtime.sessions")

SESSIONS_GROUP = "realtime.sessions"
LOGOUT = "realtime.logout"


class ReadOnlySessionMiddleware:
    """Put the session from the cookie into the scope; sends go straight to the server."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        # Not wrapper.send: that one asks the (lazy) session whether it changed, each message.
        return await self.inner(wrapper.scope, receive, send)


def websocket_auth(inner: Any) -> Any:
    """scope["session"] and scope["user"] for a WebSocket, read once at connect."""
    return CookieMiddleware(ReadOnlySessionMiddleware(AuthMiddleware(inner)))


def session_digest(session_key: str) -> str:
    """A session's name on the channel layer: not the key, which would sign a reader in."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


def signed_in_session(scope: dict[str, Any]) -> str | None:
    """The digest of a socket's session when a user is signed in on it, else None."""
    user, session = scope.get("user"), scope.get("session")
    if user is None or not user.is_authenticated or not session or not session.session_key:
        return None
    return session_digest(session.session_key)


def close_sockets_of_session(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """`user_logged_out` receiver: runs before Django flushes the session, so its key is known."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if not session_key:
        return
    event = {"type": LOGOUT, "session": session_digest(session_key)}
    try:
        async_to_sync(get_channel_layer().group_send)(SESSIONS_GROUP, event)
    except (redis.RedisError, OSError) as exc:
        # Signing out must work even when Redis does not; the sockets then stay until they close.
        logger.warning("Could not close the sockets of a signed-out session: %s", exc)
