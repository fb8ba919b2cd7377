"""End to end: the README's production command, `daphne -e ssl:...`, over a real TLS handshake.

A real daphne subprocess with the dev certificate; a real WSS client (websockets) that verifies
the certificate against the dev CA.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from tests.helpers import receive_json, ws_connect


@pytest.fixture(scope="module")
def wss_url(daphne_tls) -> str:
    return f"wss://localhost:{daphne_tls.port}/ws/"


def test_the_welcome_says_secure_and_names_tls(wss_url, client_tls):
    async def scenario():
        async with ws_connect(wss_url, client_tls) as socket_:
            return await receive_json(socket_)

    welcome = asyncio.run(scenario())
    assert welcome["type"] == "welcome"
    assert welcome["secure"] is True
    assert welcome["scheme"] == "wss"
    assert welcome["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert welcome["worker"]


def test_ping_gets_pong(wss_url, client_tls):
    async def scenario():
        async with ws_connect(wss_url, client_tls) as socket_:
            await receive_json(socket_)
            await socket_.send(json.dumps({"type": "ping"}))
            return await receive_json(socket_)

    assert asyncio.run(scenario()) == {"type": "pong"}


BAD_INPUTS = [
    ("this is not json", "invalid_json"),
    ("[1, 2, 3]", "not_an_object"),
    ('{"no": "type"}', "missing_type"),
    ('{"type": "teleport"}', "unknown_type"),
    (b"\x89PNG binary", "binary_not_supported"),
]


def test_each_bad_input_gets_an_error_and_the_socket_stays_open(wss_url, client_tls):
    async def scenario():
        replies = []
        async with ws_connect(wss_url, client_tls) as socket_:
            await receive_json(socket_)
            for frame, _ in BAD_INPUTS:
                await socket_.send(frame)
                replies.append(await receive_json(socket_))
            await socket_.send(json.dumps({"type": "ping"}))
            replies.append(await receive_json(socket_))
        return replies

    replies = asyncio.run(scenario())
    assert [r.get("code") for r in replies[:-1]] == [code for _, code in BAD_INPUTS]
    assert all(r["type"] == "error" and r["detail"] for r in replies[:-1])
    assert replies[-1] == {"type": "pong"}


def test_a_message_over_the_size_limit_is_closed_with_1009(wss_url, client_tls):
    async def scenario():
        async with ws_connect(wss_url, client_tls) as socket_:
            await receive_json(socket_)
            await socket_.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
            with pytest.raises(ConnectionClosed) as info:
                await receive_json(socket_)
            return info.value.rcvd

    close = asyncio.run(scenario())
    assert close is not None, "daphne dropped the connection without a close frame"
    assert close.code == 1009


def test_a_message_under_the_limit_is_accepted(wss_url, client_tls):
    async def scenario():
        async with ws_connect(wss_url, client_tls) as socket_:
            await receive_json(socket_)
            await socket_.send(json.dumps({"type": "ping", "pad": "x" * 60_000}))
            return await receive_json(socket_)

    assert asyncio.run(scenario()) == {"type": "pong"}


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "https://localhost.evil.example", "null", None],
    ids=["foreign", "look-alike", "null", "missing"],
)
def test_a_foreign_or_missing_origin_is_refused_with_403(wss_url, client_tls, origin):
    async def scenario():
        async with ws_connect(wss_url, client_tls, origin=origin):
            pass

    with pytest.raises(InvalidStatus) as info:
        asyncio.run(scenario())
    assert info.value.response.status_code == 403


def test_plain_ws_to_the_tls_port_fails(daphne_tls):
    async def scenario():
        async with ws_connect(f"ws://localhost:{daphne_tls.port}/ws/", open_timeout=5):
            pass

    # The TLS port answers a plain HTTP upgrade with TLS bytes (or nothing): no handshake.
    with pytest.raises(InvalidMessage):
        asyncio.run(scenario())


def test_a_client_that_does_not_trust_the_dev_ca_is_refused(wss_url):
    async def scenario():
        async with ws_connect(wss_url, ssl.create_default_context()):
            pass

    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(scenario())


def https_get(url: str, tls: ssl.SSLContext) -> tuple[int, dict, bytes]:
    with urllib.request.urlopen(url, context=tls, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_the_page_and_its_static_files_come_over_https_from_the_same_port(daphne_tls, client_tls):
    base = f"https://localhost:{daphne_tls.port}"
    status, headers, body = https_get(base + "/", client_tls)
    assert status == 200
    assert "max-age=31536000" in headers["Strict-Transport-Security"]
    html = body.decode()
    assert 'id="connection"' in html
    script = html.split('src="', 2)[-1].split('"')[0]
    assert script.startswith("/static/realtime/page.") and script.endswith(".mjs")
    status, headers, js = https_get(base + script, client_tls)
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")  # a module script needs it
    assert b'from "./realtime.mjs"' in js
    # The module it imports, where the browser resolves it (beside the page's script).
    status, headers, module = https_get(base + "/static/realtime/realtime.mjs", client_tls)
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"export function connect" in module


def test_the_server_says_once_that_the_layer_is_in_memory(daphne_tls):
    log = daphne_tls.log()
    assert log.count("REDIS_URL is not set: using the in-memory channel layer") == 1


def test_a_text_frame_that_is_not_utf8_is_closed_with_1007(wss_url, client_tls):
    async def scenario():
        async with ws_connect(wss_url, client_tls) as socket_:
            await receive_json(socket_)
            await socket_.send(b'{"type": "ping", "x": "\xff\xfe"}', text=True)
            with pytest.raises(ConnectionClosed) as info:
                await receive_json(socket_)
            return info.value.rcvd

    close = asyncio.run(scenario())
    assert close is not None
    assert close.code == 1007
