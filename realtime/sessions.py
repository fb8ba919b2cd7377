"""Closing a session's open sockets when it signs out.

Channels reads the session's user once, when a socket opens, so a socket would stay signed in
after its session signed out. Each signed-in socket joins the group of its session, named by a
hash of the session key (the key itself is a credential and never goes to the channel layer);
Django's `user_logged_out` signal sends that group `realtime.logout`, and the consumer closes
with 4001. The page's client reconnects and is then anonymous.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger("realtime.sessions")


def session_group(session_key: str) -> str:
    digest = hashlib.sha256(session_key.encode()).hexdigest()[:32]
    return f"realtime.session.{digest}"


def close_sockets_of_session(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """`user_logged_out` receiver: runs before Django flushes the session, so its key is known."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if not session_key:
        return
    try:
        async_to_sync(get_channel_layer().group_send)(
            session_group(session_key), {"type": "realtime.logout"}
        )
    except (redis.RedisError, OSError) as exc:
        # Signing out must work even when Redis does not; the sockets then stay until they close.
        logger.warning("Could not close the sockets of a signed-out session: %s", exc)
