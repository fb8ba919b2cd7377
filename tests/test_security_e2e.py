"""End to end: the hardening of issue 4 against real servers.

A daphne started with the README's production command (TLS, debug off) and small limits, real
WSS clients that verify the certificate against the test's dev CA; plain `runserver` for the
TLS-required checks. The in-process counterparts are test_origins, test_limits,
test_authorization and test_fuzz.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import (
    PYTHON,
    BrowserSession,
    create_user,
    daphne_tls_args,
    free_port,
    receive_json,
    run_in_shell,
    ws_connect,
)

RATE, BURST, MAX_PER_CLIENT, IDLE, HANDSHAKE = 5, 10, 4, 3, 2


@pytest.fixture(scope="module")
def hardened(start, dev_certs):
    """daphne -e ssl:... with small limits and exact allowed origins (scheme and port)."""
    port = free_port()
    return start(
        daphne_tls_args(port, dev_certs),
        port,
        REALTIME_ALLOWED_ORIGINS=f"https://localhost:{port}",
        REALTIME_WS_RATE=str(RATE),
        REALTIME_WS_BURST=str(BURST),
        REALTIME_WS_MAX_PER_CLIENT=str(MAX_PER_CLIENT),
        REALTIME_WS_IDLE_TIMEOUT=str(IDLE),
        REALTIME_WS_HANDSHAKE_TIMEOUT=str(HANDSHAKE),
    )


@pytest.fixture(scope="module")
def url(hardened) -> str:
    return f"wss://localhost:{hardened.port}/ws/"


async def closed_with(socket_, timeout: float = 10) -> tuple[int | None, str]:
    """Read until the server closes; its close code and reason (None: no close frame)."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(socket_.recv(), timeout)
    received = info.value.rcvd
    return (received.code, received.reason) if received else (None, "")


# --- Origins -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        None,
        "https://localhost.evil.example",
        "https://localhost:1",
        "http://localhost:{port}",
    ],
    ids=["foreign", "null", "missing", "look-alike", "foreign-port", "plain-http-scheme"],
)
def test_a_foreign_origin_is_refused_with_403(hardened, url, client_tls, origin):
    if origin is not None:
        origin = origin.format(port=hardened.port)

    async def scenario():
        async with ws_connect(url, client_tls, origin=origin):
            pass

    with pytest.raises(InvalidStatus) as info:
        asyncio.run(scenario())
    assert info.value.response.status_code == 403


def test_the_exact_allowed_origin_is_accepted_and_refusals_are_logged_once(
    hardened, url, client_tls
):
    async def scenario():
        async with ws_connect(url, client_tls) as socket_:  # Origin https://localhost:PORT
            return await receive_json(socket_)

    assert asyncio.run(scenario())["type"] == "welcome"
    log = hardened.log()
    assert log.count("Refused a WebSocket from origin 'https://localhost:1' with 403") == 1
    assert "not in REALTIME_ALLOWED_ORIGINS" in log
    assert "(no Origin header)" in log


# --- Session cookie over WSS -------------------------------------------------------------


def test_the_session_cookie_is_secure_httponly_lax_and_authenticates_the_socket(
    daphne_tls, server_env, client_tls
):
    password = create_user(server_env, "carol", staff=False)
    base = f"https://localhost:{daphne_tls.port}"
    session = BrowserSession(base, client_tls)
    session.login("carol", password)
    cookie = next(c for c in session.cookies if c.name == "sessionid")
    assert cookie.secure
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite") == "Lax"

    async def welcome(**kwargs):
        async with ws_connect(f"wss://localhost:{daphne_tls.port}/ws/", client_tls, **kwargs) as s:
            return await receive_json(s)

    signed_in = asyncio.run(welcome(additional_headers={"Cookie": session.cookie_header()}))
    anonymous = asyncio.run(welcome())
    assert signed_in["user"] == "carol"
    assert signed_in["secure"] is True
    assert anonymous["user"] is None


def test_a_session_deleted_from_the_database_closes_its_socket(start, dev_certs, client_tls):
    """Without a sign-out (`clearsessions`, an admin, an expiry): the worker looks at the
    session within REALTIME_SESSION_CHECK seconds (1 here) and closes the socket."""
    port = free_port()
    server = start(daphne_tls_args(port, dev_certs), port, REALTIME_SESSION_CHECK="1",
                   REALTIME_FANOUT_CHECK="1")  # fmt: skip
    password = create_user(server.env, "dave", staff=False)
    session = BrowserSession(f"https://localhost:{port}", client_tls)
    session.login("dave", password)

    async def scenario():
        async with ws_connect(
            f"wss://localhost:{port}/ws/", client_tls,
            additional_headers={"Cookie": session.cookie_header()},
        ) as socket_:  # fmt: skip
            assert (await receive_json(socket_))["user"] == "dave"
            code = "from django.contrib.sessions.models import Session\n"
            code += "Session.objects.all().delete()\n"
            await asyncio.to_thread(run_in_shell, server.env, code)
            try:
                while True:
                    await receive_json(socket_, timeout=15)
            except ConnectionClosed as exc:
                return exc.rcvd.code, exc.rcvd.reason

    assert asyncio.run(scenario()) == (4001, "Session ended")


# --- TLS required ------------------------------------------------------------------------


def first_reply(url: str, **kwargs) -> tuple[dict | None, tuple[int | None, str] | None]:
    """(the welcome, or None; the close code and reason, or None)."""

    async def scenario():
        async with ws_connect(url, **kwargs) as socket_:
            try:
                return await receive_json(socket_), None
            except ConnectionClosed as exc:
                return None, (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")

    return asyncio.run(scenario())


def plain_runserver(start, **env: str):
    port = free_port()
    args = [PYTHON, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    return start(args, port, DJANGO_DEBUG="1", REALTIME_REQUIRE_TLS="1", **env)


def test_with_tls_required_a_plain_socket_is_closed_with_1008(start):
    server = plain_runserver(start)
    url = f"ws://localhost:{server.port}/ws/"
    refused = (1008, "TLS required: connect with wss://")
    assert first_reply(url) == (None, refused)
    # Without trusted proxy headers, a client claiming https is not believed.
    assert first_reply(url, additional_headers={"X-Forwarded-Proto": "https"}) == (None, refused)


def test_with_tls_required_a_trusted_proxy_that_says_https_is_allowed(start):
    server = plain_runserver(start, DJANGO_TRUST_PROXY_HEADERS="1")
    url = f"ws://localhost:{server.port}/ws/"
    # The page behind such a proxy is https, on the port the socket is opened on.
    origin = f"https://localhost:{server.port}"
    welcome, closed = first_reply(
        url, origin=origin, additional_headers={"X-Forwarded-Proto": "https"}
    )
    assert closed is None and welcome["secure"] is True
    assert first_reply(url, additional_headers={"X-Forwarded-Proto": "http"})[1][0] == 1008
    assert first_reply(url)[1][0] == 1008


# --- Limits ------------------------------------------------------------------------------


async def flood(url: str, tls: ssl.SSLContext) -> tuple[int, int | None, str]:
    """Send pings as fast as possible: (rate_limited errors seen, close code, reason)."""
    errors = 0
    async with ws_connect(url, tls) as socket_:
        await receive_json(socket_)

        async def read() -> tuple[int | None, str]:
            nonlocal errors
            try:
                while True:
                    message = json.loads(await socket_.recv())
                    errors += message.get("code") == "rate_limited"
            except ConnectionClosed as exc:
                return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")

        reader = asyncio.create_task(read())
        try:
            for _ in range(2000):
                await socket_.send('{"type": "ping"}')
                # A send need not yield: without this the reader may not see the server's
                # close frame before autobahn's close handshake timeout drops the TCP
                # connection, and the close frame with it (seen on a loaded CI machine).
                await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        code, reason = await asyncio.wait_for(reader, 10)
    return errors, code, reason


async def polite(url: str, tls: ssl.SSLContext, stop: asyncio.Event) -> list[float]:
    """Ping within the rate until told to stop: the round-trip time of each ping."""
    times = []
    async with ws_connect(url, tls) as socket_:
        await receive_json(socket_)
        while not stop.is_set():
            sent = time.monotonic()
            await socket_.send('{"type": "ping"}')
            assert await receive_json(socket_, timeout=5) == {"type": "pong"}
            times.append(time.monotonic() - sent)
            await asyncio.sleep(1 / (RATE - 1))
    return times


def test_a_flooding_client_is_closed_while_another_is_served_promptly(url, client_tls):
    async def scenario():
        stop = asyncio.Event()
        served = asyncio.create_task(polite(url, client_tls, stop))
        await asyncio.sleep(0.5)
        flooded = await flood(url, client_tls)
        await asyncio.sleep(1)
        stop.set()
        return flooded, await served

    (errors, code, reason), round_trips = asyncio.run(scenario())
    assert (code, reason) == (1008, "Rate limit exceeded")
    assert errors >= 2 * BURST
    assert len(round_trips) >= 5
    assert max(round_trips) < 1.0, round_trips


async def welcomed(stack, url: str, client_tls, within: float = 5.0):
    """A socket that got its welcome, tried again while the server refuses it for its address's
    sockets that are closing (each refused one is closed at once and counts for nothing)."""
    deadline = time.monotonic() + within
    while True:
        socket_ = await stack.enter_async_context(ws_connect(url, client_tls))
        try:
            first = await receive_json(socket_)
        except ConnectionClosed:
            assert time.monotonic() < deadline, f"still refused after {within} s"
            await asyncio.sleep(0.05)
            continue
        assert first["type"] == "welcome", first
        return socket_


def test_connections_beyond_the_cap_per_address_get_1013_and_the_others_stay(url, client_tls):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            sockets = []
            for _ in range(MAX_PER_CLIENT):  # earlier tests' sockets are uncounted as they end
                sockets.append(await welcomed(stack, url, client_tls))
            async with ws_connect(url, client_tls) as extra:
                refused = await closed_with(extra)
            for socket_ in sockets:
                await socket_.send('{"type": "ping"}')
            still = [await receive_json(s) for s in sockets]
        async with contextlib.AsyncExitStack() as stack:
            again = await welcomed(stack, url, client_tls)  # once the server sees the closes
        return refused, still, again

    refused, still, again = asyncio.run(scenario())
    assert refused == (1013, "Too many connections from your address")
    assert still == [{"type": "pong"}] * MAX_PER_CLIENT
    assert again is not None


def test_a_silent_socket_is_closed_with_4000_and_a_talking_one_is_not(url, client_tls):
    async def scenario():
        async with ws_connect(url, client_tls) as silent, ws_connect(url, client_tls) as talking:
            welcome = await receive_json(silent)
            await receive_json(talking)
            started = time.monotonic()
            closing = asyncio.create_task(closed_with(silent))
            for _ in range(IDLE + 2):
                await asyncio.sleep(1)
                await talking.send('{"type": "ping"}')
                assert await receive_json(talking) == {"type": "pong"}
            return welcome, await closing, time.monotonic() - started

    welcome, closed, elapsed = asyncio.run(scenario())
    assert welcome["idle_timeout"] == IDLE
    assert closed == (4000, f"Idle for {IDLE} s")
    assert elapsed >= IDLE


def seconds_until_dropped(port: int, tls: ssl.SSLContext | None, send: bytes = b"") -> float:
    """Connect (and handshake TLS), send `send`, then nothing: seconds until the server hangs up."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(
            socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE + 5)
        )
        if tls:
            conn = stack.enter_context(tls.wrap_socket(conn, server_hostname="localhost"))
        conn.sendall(send)
        try:
            while conn.recv(4096):
                pass
        except (ConnectionResetError, ssl.SSLError):
            pass
        except TimeoutError:
            return float("inf")  # still connected
        return time.monotonic() - started


@pytest.mark.parametrize(
    "what",
    ["tls-then-nothing", "tcp-then-nothing", "half-a-request"],
)
def test_a_client_that_never_sends_the_upgrade_is_dropped_within_the_handshake_timeout(
    hardened, client_tls, what
):
    if what == "tcp-then-nothing":
        elapsed = seconds_until_dropped(hardened.port, None)
    else:
        partial = b"GET /ws/ HTTP/1.1\r\nHost: localhost\r\n" if what == "half-a-request" else b""
        elapsed = seconds_until_dropped(hardened.port, client_tls, partial)
    # Twisted checks its idle timer about once a second.
    assert HANDSHAKE - 0.5 < elapsed < HANDSHAKE + 3, elapsed


@pytest.mark.parametrize(
    "frame",
    [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b'{"type": "ping", "x": "\xe2\x82"}'],
    ids=["invalid-byte", "overlong", "surrogate", "truncated"],
)
def test_invalid_utf8_in_a_text_frame_is_closed_with_1007_and_the_server_serves_on(
    url, client_tls, frame
):
    async def scenario():
        async with ws_connect(url, client_tls) as bad, ws_connect(url, client_tls) as good:
            await receive_json(bad)
            await receive_json(good)
            await bad.send(frame, text=True)
            closed = await closed_with(bad)
            await good.send('{"type": "ping"}')
            return closed, await receive_json(good)

    closed, answer = asyncio.run(scenario())
    assert closed[0] == 1007
    assert answer == {"type": "pong"}


# --- The default origin check, with TLS required ------------------------------------------


@pytest.fixture(scope="module")
def default_origins(start, dev_certs, redis_server):
    """`serve --workers 2` as shipped: TLS required, origins checked against ALLOWED_HOSTS."""
    port = free_port()
    args = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port),
            "--cert", str(dev_certs.cert), "--key", str(dev_certs.key)]  # fmt: skip
    return start(args, port, REDIS_URL=redis_server.url)


@pytest.mark.parametrize(
    "origin, opens",
    [
        ("https://localhost:{port}", True),
        ("https://LOCALHOST:{port}", True),
        ("http://localhost:1", False),  # another service's page on the same host
        ("http://localhost:{port}", False),  # not https
        ("https://localhost:1", False),  # https, but another port
        ("https://localhost", False),  # 443: not where this socket was opened
    ],
)
def test_with_tls_required_only_https_pages_on_the_sockets_port_may_open_one(
    default_origins, client_tls, origin, opens
):
    port = default_origins.port
    url = f"wss://localhost:{port}/ws/"

    async def scenario():
        try:
            async with ws_connect(url, client_tls, origin=origin.format(port=port)) as socket_:
                return (await receive_json(socket_))["type"]
        except InvalidStatus as refused:
            return refused.response.status_code

    assert asyncio.run(scenario()) == ("welcome" if opens else 403)
