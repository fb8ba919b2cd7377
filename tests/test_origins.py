"""Cross-site WebSocket hijacking and TLS required: realtime.websocket.middleware, in process.

Each refused handshake must be refused before the consumer (here: a recording app) runs.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlparse

import pytest

from project.env import SettingsError
from project.settings import websocket_origins
from realtime.websocket import middleware
from tests.helpers import Communicator
from tests.test_settings import STRONG_KEY, setting

# A refusal runs Channels' WebsocketDenier, a consumer, which closes stale database connections.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _forget_logged_origins():
    middleware._logged_origins.clear()
    yield
    middleware._logged_origins.clear()


def handshake(origin: str | None) -> tuple[bool, bool]:
    """(Whether the socket opened, whether the inner app ran) for one handshake. A refusal
    before accept is what daphne answers with HTTP 403 (tests/test_security_e2e.py)."""
    ran = []

    async def inner(scope, receive, send):
        ran.append(scope)
        await receive()
        await send({"type": "websocket.accept"})

    async def scenario():
        headers = [(b"host", b"localhost")]
        if origin is not None:
            headers.append((b"origin", origin.encode("latin1")))
        app = middleware.origin_validator(inner)
        communicator = Communicator(app, "/ws/", headers=headers)
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected, bool(ran)

    return asyncio.run(scenario())


REFUSED_EVERYWHERE = [
    "https://evil.example",
    "https://localhost.evil.example",
    "https://evil.example/localhost",
    "null",
    "",
    None,
]


@pytest.mark.parametrize(
    "origin",
    REFUSED_EVERYWHERE,
    ids=["foreign", "look-alike", "foreign-path", "null", "empty", "missing"],
)
@pytest.mark.parametrize("mode", ["allowed-hosts", "allowed-origins"])
def test_foreign_null_and_missing_origins_get_403_before_the_consumer(settings, mode, origin):
    settings.ALLOWED_HOSTS = ["localhost"]
    if mode == "allowed-origins":
        settings.REALTIME_ALLOWED_ORIGINS = ["https://localhost:8443"]
    assert handshake(origin) == (False, False)


def test_by_default_the_host_decides_and_the_port_does_not(settings):
    settings.ALLOWED_HOSTS = ["localhost"]
    settings.REALTIME_ALLOWED_ORIGINS = []
    assert handshake("https://localhost:8443") == (True, True)
    assert handshake("https://localhost:9999") == (True, True)
    assert handshake("http://localhost") == (True, True)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://localhost:8443", True),
        ("HTTPS://LOCALHOST:8443", True),
        ("https://localhost:9443", False),  # a foreign port on an allowed host
        ("https://localhost", False),  # 443
        ("http://localhost:8443", False),  # the same port without TLS
        ("https://app.localhost:8443", False),
    ],
)
def test_with_allowed_origins_scheme_host_and_port_must_all_match(settings, origin, allowed):
    settings.REALTIME_ALLOWED_ORIGINS = ["https://localhost:8443"]
    assert handshake(origin) == (allowed, allowed)


def test_a_refused_origin_is_logged_once_with_the_setting_to_change(settings, caplog):
    settings.ALLOWED_HOSTS = ["localhost"]
    settings.REALTIME_ALLOWED_ORIGINS = []
    with caplog.at_level(logging.WARNING, logger="realtime.websocket.middleware"):
        for _ in range(3):
            handshake("https://app.example.org")
        handshake(None)
        handshake("null")
    lines = [r.getMessage() for r in caplog.records if r.name == "realtime.websocket.middleware"]
    assert len(lines) == 3
    assert "'https://app.example.org'" in lines[0]
    assert "host 'app.example.org' is not in ALLOWED_HOSTS (DJANGO_ALLOWED_HOSTS)" in lines[0]
    assert "no Origin header" in lines[1]
    assert "opaque origin" in lines[2]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_with_allowed_origins_the_log_names_that_setting(settings, caplog):
    settings.REALTIME_ALLOWED_ORIGINS = ["https://localhost:8443"]
    with caplog.at_level(logging.WARNING, logger="realtime.websocket.middleware"):
        handshake("https://localhost:9443")
    assert "not in REALTIME_ALLOWED_ORIGINS" in caplog.records[0].getMessage()


def test_refused_origins_stop_being_logged_after_a_hundred(settings, caplog):
    settings.REALTIME_ALLOWED_ORIGINS = ["https://localhost:8443"]
    with caplog.at_level(logging.WARNING, logger="realtime.websocket.middleware"):
        for n in range(150):
            middleware.log_refused_origin(urlparse(f"https://x{n}.example"), by_origin=True)
    assert len(caplog.records) == middleware.MAX_LOGGED_ORIGINS + 1
    assert "not logging more" in caplog.records[-1].getMessage()


@pytest.mark.parametrize(
    "value",
    ["localhost", "app.example.org:8443", "wss://app.example.org", "https://", "https://a/b"],
)
def test_allowed_origins_must_be_full_origins(monkeypatch, value):
    monkeypatch.setenv("REALTIME_ALLOWED_ORIGINS", value)
    with pytest.raises(SettingsError) as info:
        websocket_origins("REALTIME_ALLOWED_ORIGINS")
    assert "REALTIME_ALLOWED_ORIGINS" in str(info.value)


def test_allowed_origins_are_read_as_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("REALTIME_ALLOWED_ORIGINS", "https://a.example:8443, HTTPS://B.example/")
    assert websocket_origins("REALTIME_ALLOWED_ORIGINS") == [
        "https://a.example:8443",
        "https://b.example",
    ]


def test_tls_is_required_by_default_unless_debug_is_on():
    assert setting("REALTIME_REQUIRE_TLS", DJANGO_SECRET_KEY=STRONG_KEY) == "True"
    assert setting("REALTIME_REQUIRE_TLS", DJANGO_DEBUG="1") == "False"
    assert setting("REALTIME_REQUIRE_TLS", DJANGO_DEBUG="1", REALTIME_REQUIRE_TLS="1") == "True"


def tls_required_outcome(scheme: str) -> tuple[list[dict], bool]:
    ran = []

    async def inner(scope, receive, send):
        ran.append(scope)
        await receive()
        await send({"type": "websocket.accept"})

    async def scenario():
        async def with_scheme(scope, receive, send):
            app = middleware.RequireTLSMiddleware(inner)
            return await app({**scope, "scheme": scheme}, receive, send)

        communicator = Communicator(with_scheme, "/ws/")
        connected, _ = await communicator.connect()
        assert connected
        outputs = []
        while not await communicator.receive_nothing(0.05):
            outputs.append(await communicator.receive_output())
        await communicator.disconnect()
        return outputs

    return asyncio.run(scenario()), bool(ran)


def test_with_tls_required_a_plain_socket_is_closed_with_1008(settings):
    settings.REALTIME_REQUIRE_TLS = True
    outputs, ran = tls_required_outcome("ws")
    assert outputs == [
        {"type": "websocket.close", "code": 1008, "reason": "TLS required: connect with wss://"}
    ]
    assert not ran


def test_with_tls_required_a_tls_socket_goes_through(settings):
    settings.REALTIME_REQUIRE_TLS = True
    assert tls_required_outcome("wss") == ([], True)


def test_without_tls_required_a_plain_socket_goes_through(settings):
    settings.REALTIME_REQUIRE_TLS = False
    assert tls_required_outcome("ws") == ([], True)


def test_a_new_project_in_debug_with_no_allowed_hosts_takes_local_origins_only(settings):
    """startproject leaves ALLOWED_HOSTS empty with DEBUG on; Django then serves local names."""
    settings.ALLOWED_HOSTS = []
    settings.REALTIME_ALLOWED_ORIGINS = []
    settings.DEBUG = True
    assert handshake("https://localhost:8000") == (True, True)
    assert handshake("http://127.0.0.1:8000") == (True, True)
    assert handshake("https://evil.example") == (False, False)
    settings.DEBUG = False
    assert handshake("https://localhost:8000") == (False, False)
