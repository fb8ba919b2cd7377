"""TransportSchemeMiddleware: the scheme comes from the transport or a trusted proxy only."""

from __future__ import annotations

import asyncio

import pytest

from realtime.websocket.middleware import TransportSchemeMiddleware


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
