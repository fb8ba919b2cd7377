"""TransportSchemeMiddleware: the scheme comes from the transport or a trusted proxy only.
websocket_auth: the session's user, looked up in a thread only when there is a session."""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore

from realtime.websocket import sessions
from realtime.websocket.middleware import TransportSchemeMiddleware
from realtime.websocket.sessions import websocket_auth


def scheme_seen(scope: dict) -> str:
    seen = {}

    async def app(scope, receive, send):
        seen["scheme"] = scope["scheme"]

    asyncio.run(TransportSchemeMiddleware(app)({"type": "websocket", **scope}, None, None))
    return seen["scheme"]


def test_it_keeps_the_scheme_the_server_saw():
    assert scheme_seen({"scheme": "wss", "headers": []}) == "wss"
    assert scheme_seen({"scheme": "ws", "headers": []}) == "ws"


def test_it_takes_an_unreported_scheme_as_insecure():
    assert scheme_seen({"headers": []}) == "ws"


def test_it_ignores_x_forwarded_proto_unless_proxies_are_trusted(settings):
    settings.SECURE_PROXY_SSL_HEADER = None
    forwarded = [(b"x-forwarded-proto", b"https")]
    assert scheme_seen({"scheme": "ws", "headers": forwarded}) == "ws"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"https", "wss"), (b"http", "ws"), (b"https, http", "wss"), (b"http, https", "ws")],
)
def test_a_trusted_proxy_decides(settings, value, expected):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    scope = {
        "scheme": "ws" if expected == "wss" else "wss",
        "headers": [(b"x-forwarded-proto", value)],
    }
    assert scheme_seen(scope) == expected


def test_a_trusted_proxy_that_says_nothing_leaves_the_transport_scheme(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert scheme_seen({"scheme": "wss", "headers": []}) == "wss"


# --- websocket_auth: the user, read once --------------------------------------------------


def user_seen(cookie: str) -> object:
    seen = {}

    async def app(scope, receive, send):
        seen["user"] = scope["user"]

    headers = [(b"cookie", cookie.encode())] if cookie else []
    asyncio.run(websocket_auth(app)({"type": "websocket", "headers": headers}, None, None))
    return seen["user"]


def test_a_socket_without_a_session_is_anonymous_without_asking_a_thread(monkeypatch):
    def no_thread(scope):
        raise AssertionError("get_user called for a socket without a session")

    monkeypatch.setattr(sessions, "get_user", no_thread)
    # The user itself, not Channels' lazy object resolved in a thread.
    assert type(user_seen("")) is AnonymousUser
    assert type(user_seen("csrftoken=abc; sessionid=short")) is AnonymousUser  # not a key


@pytest.mark.django_db(transaction=True)
def test_a_socket_with_a_session_gets_its_user():
    user = get_user_model().objects.create_user("middleware-user", password="pw-0123456789ab")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    seen = user_seen(f"{settings.SESSION_COOKIE_NAME}={session.session_key}")
    assert seen.pk == user.pk
    assert isinstance(user_seen(f"{settings.SESSION_COOKIE_NAME}={'x' * 32}"), AnonymousUser)
