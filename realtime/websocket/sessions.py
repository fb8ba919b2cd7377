"""Sessions on WebSockets: read once at connect, and closing a session's sockets on sign-out.

`websocket_auth()` is Channels' AuthMiddlewareStack without its session save check on every
message (a socket never changes its session: signing in and out happen over HTTPS), and without
a thread hop when there is no session to look up. Since Channels reads the user only when a
socket opens, a sign-out, or a change of the user's access (deactivated, deleted, staff or not,
a new password), sends one `realtime.logout` event to every worker's fan-out
(realtime.messaging.sign_outs), naming the session by a hash of its key; each worker closes
those sockets with 4001 and the page reconnects. What closes, and what cannot be seen
(`QuerySet.update()`): docs/security.md ("Authentication").
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

import redis
from channels.auth import get_user
from channels.sessions import CookieMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.utils import timezone

from realtime.messaging.layer import send_to_group

logger = logging.getLogger("realtime.websocket.sessions")

SESSIONS_GROUP = "realtime.sessions"  # a name on the wire: stable across versions
LOGOUT = "realtime.logout"


class ReadOnlySessionMiddleware:
    """Put the session from the cookie into the scope; sends go straight to the server.

    Channels' SessionMiddleware also wraps `send` to ask the session, on each message, whether
    it changed and must be saved; a socket never changes it. Built with Django's public session
    API: the store of SESSION_ENGINE, which reads the database only when first used (by
    UserOnceMiddleware, in a thread)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.session_store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if "session" not in scope:  # a session middleware above this one has the last word
            key = scope["cookies"].get(settings.SESSION_COOKIE_NAME)
            scope = {**scope, "session": self.session_store(key)}
        return await self.inner(scope, receive, send)


class UserOnceMiddleware:
    """scope["user"]: the session's user, as Channels' AuthMiddleware finds it (its public
    `get_user`, in a worker thread), or AnonymousUser at once when the cookie names no
    session. AuthMiddleware asks a thread either way: for a socket without a session that hop
    was a fifth of the server's work per handshake (py-spy, bench handshakes)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if "user" not in scope:  # a middleware above this one has the last word
            named = scope["session"].session_key is not None
            scope = {**scope, "user": await get_user(scope) if named else AnonymousUser()}
        return await self.inner(scope, receive, send)


def websocket_auth(inner: Any) -> Any:
    """scope["session"] and scope["user"] for a WebSocket, read once at connect."""
    return CookieMiddleware(ReadOnlySessionMiddleware(UserOnceMiddleware(inner)))


def session_digest(session_key: str) -> str:
    """A session's name on the channel layer: not the key, which would sign a reader in."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SignedIn:
    """Who a signed-in socket belongs to, as the channel layer may name it; and, for this
    worker only, its session's key and when the session said it would end."""

    session: str  # session_digest(), never the key
    user: str  # the user's primary key
    key: str = field(default="", repr=False, compare=False)  # never sent anywhere
    ends_at: float = 0.0  # unix time; a first guess, checked against the store (session_end)

    def registry_keys(self) -> tuple[str, ...]:
        return (session_entry(self.session), user_entry(self.user))


# The names a `realtime.logout` event gives (its "signed_in"), and the fan-out's registry uses.
def session_entry(digest: str) -> str:
    return f"session:{digest}"


def user_entry(pk: Any) -> str:
    return f"user:{pk}"


def signed_in_session(scope: dict[str, Any]) -> SignedIn | None:
    """A socket's session and user when a user is signed in on it, else None."""
    user, session = scope.get("user"), scope.get("session")
    if user is None or not user.is_authenticated or not session or not session.session_key:
        return None
    ends_at = session.get_expiry_date().timestamp()
    return SignedIn(session_digest(session.session_key), str(user.pk), session.session_key, ends_at)


class SessionChecks:
    """The open signed-in sockets of a worker, each with its session's key and when to look at
    the session again (the fan-out's queue: realtime.messaging.sign_outs).

    A socket leaves the moment it closes (forget()), so the queue never holds more than the
    worker's open signed-in sockets: a client reconnecting in a loop cannot grow it (a heap
    would keep each closed socket until its turn came, REALTIME_SESSION_CHECK seconds later).
    Finding the due ones walks every entry, once per REALTIME_FANOUT_CHECK seconds: 15,000
    entries took 0.3 ms (timeit on this machine), against 5 s between walks.
    """

    def __init__(self) -> None:
        self.entries: dict[Any, tuple[float, str]] = {}  # consumer -> (unix time, session key)

    def __len__(self) -> int:
        return len(self.entries)

    def look_by(self, consumer: Any, key: str, when: float) -> None:
        self.entries[consumer] = (when, key)

    def forget(self, consumer: Any) -> None:
        self.entries.pop(consumer, None)

    def take_due(self, now: float) -> list[tuple[Any, str]]:
        """The sockets whose look is due, with their session keys; they leave the queue."""
        due = [(consumer, key) for consumer, (when, key) in self.entries.items() if when <= now]
        for consumer, _ in due:
            del self.entries[consumer]
        return due


def session_end(session_key: str) -> float | None:
    """When a session ends now, by its store (unix time); None if it has ended or is gone.

    The database backend keeps the real end in its table (a session's own data knows it only
    when set_expiry() was called); other backends answer from the session's data."""
    engine = import_module(settings.SESSION_ENGINE)
    store_class = engine.SessionStore
    if hasattr(store_class, "get_model_class"):
        ends = (
            store_class.get_model_class()
            .objects.filter(session_key=session_key, expire_date__gt=timezone.now())
            .values_list("expire_date", flat=True)
            .first()
        )
        return None if ends is None else ends.timestamp()
    store = store_class(session_key)
    if not store.load() or store.session_key is None:
        return None
    return store.get_expiry_date().timestamp()


def send_logout(event: dict[str, Any]) -> None:
    try:
        send_to_group(SESSIONS_GROUP, event)
    except (redis.RedisError, OSError) as exc:
        # Signing out must work even when Redis does not; the sockets then stay until they close.
        logger.warning("Could not close the sockets of a signed-out session or user: %s", exc)


def close_sockets_of_session(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """`user_logged_out` receiver: runs before Django flushes the session, so its key is known."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if not session_key:
        return
    send_logout({"type": LOGOUT, "signed_in": session_entry(session_digest(session_key))})


# What a signed-in socket's access depends on (audiences: realtime.broadcast.audiences_for).
ACCESS_FIELDS = ("password", "is_active", "is_staff", "is_superuser")


def access_of(user: Any) -> dict[str, Any]:
    return {field: getattr(user, field, None) for field in ACCESS_FIELDS}


def remember_access(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """`pre_save` of the user model: note its access as stored, to compare after the save."""
    if instance.pk is None or (update_fields and not set(update_fields) & set(ACCESS_FIELDS)):
        return  # new, or a save of other fields only (login writes last_login alone)
    stored = sender._default_manager.filter(pk=instance.pk).first()
    instance._realtime_access_before = access_of(stored) if stored is not None else None


def close_sockets_if_access_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    """`post_save` of the user model: once committed, close the user's sockets if it changed."""
    before = instance.__dict__.pop("_realtime_access_before", None)
    if before is not None and before != access_of(instance):
        close_sockets_of_user(instance.pk)


def close_sockets_of_user(pk: Any) -> None:
    """Close every socket of user `pk` on every worker (with 4001) once the transaction commits.

    Call it after changing users' access without signals, as `QuerySet.update()` does:
    `for pk in users.values_list("pk", flat=True): close_sockets_of_user(pk)`."""
    transaction.on_commit(lambda: send_logout({"type": LOGOUT, "signed_in": user_entry(pk)}))


def close_sockets_of_deleted_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    """`post_delete` of the user model."""
    close_sockets_of_user(instance.pk)
