"""What a probe learns: a WebSocket to a path no consumer serves gets 403 and one log line per
address a minute (not an HTTP 500 with a 2.5 KB traceback per handshake), and no response
names the server software."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from websockets.exceptions import InvalidStatus

from realtime.websocket.unknown import OncePerInterval
from tests.helpers import receive_json, ws_connect

LINE = "Refused a WebSocket to '/nope/' from 127.0.0.1: no such endpoint"


def test_a_key_is_said_once_per_interval_and_again_after_it():
    now = [100.0]
    should = OncePerInterval(60, clock=lambda: now[0])
    assert [should("a"), should("a"), should("b")] == [True, False, True]
    now[0] += 59.9
    assert not should("a")
    now[0] += 0.2  # past the minute
    assert should("a")


def test_an_unknown_path_gets_403_and_one_log_line(daphne_tls, client_tls):
    base = f"wss://localhost:{daphne_tls.port}"

    async def scenario():
        statuses = []
        for _ in range(5):
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(f"{base}/nope/", client_tls):
                    pass
            statuses.append(refused.value.response.status_code)
        async with ws_connect(f"{base}/ws/", client_tls) as socket_:  # the real one still works
            welcome = await receive_json(socket_)
        return statuses, welcome

    statuses, welcome = asyncio.run(scenario())
    assert statuses == [403] * 5
    assert welcome["type"] == "welcome"
    log = daphne_tls.log()
    assert log.count(LINE) == 1
    assert "Traceback" not in log and "No route found" not in log


def test_no_server_banner_on_pages_or_handshakes(daphne_tls, client_tls):
    with urllib.request.urlopen(
        f"https://localhost:{daphne_tls.port}/healthz", context=client_tls, timeout=10
    ) as response:
        assert response.headers.get("Server") is None

    async def handshake():
        async with ws_connect(f"wss://localhost:{daphne_tls.port}/ws/", client_tls) as socket_:
            return socket_.response.headers.get("Server")

    assert asyncio.run(handshake()) is None
