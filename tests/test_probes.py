"""What a probe learns: a WebSocket to a path no consumer serves gets 403 and one log line per
address a minute (not an HTTP 500 with a 2.5 KB traceback per handshake), a Host header outside
ALLOWED_HOSTS gets 400 and the same (not a 0.7 KB traceback each), and no response names the
server software."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import urllib.request

import pytest
from django.http import HttpRequest
from websockets.exceptions import InvalidStatus

from realtime.common.rates import OncePerInterval
from realtime.ops.quiet_logs import OncePerAddress
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


def disallowed_host_record(address: str) -> logging.LogRecord:
    request = HttpRequest()
    request.META["REMOTE_ADDR"] = address
    try:
        raise ValueError("Invalid HTTP_HOST header: 'evil.test'.")
    except ValueError as error:
        record = logging.LogRecord(
            "django.security.DisallowedHost",
            logging.ERROR,
            __file__,
            1,
            "%s",
            (error,),
            (ValueError, error, error.__traceback__),
        )
    record.request = request
    return record


def test_a_bad_host_is_logged_once_per_address_per_minute_without_traceback():
    now = [0.0]
    quiet = OncePerAddress(OncePerInterval(60, clock=lambda: now[0]))
    passed = [quiet.filter(disallowed_host_record(a)) for a in ["1.2.3.4"] * 5 + ["5.6.7.8"]]
    assert passed == [True, False, False, False, False, True]
    now[0] += 61
    record = disallowed_host_record("1.2.3.4")
    assert quiet.filter(record)
    assert record.exc_info is None
    assert record.getMessage() == (
        "Invalid HTTP_HOST header: 'evil.test'. (from 1.2.3.4; said once a minute per address)"
    )


def bad_host_request(port: int, client_tls: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), 10) as raw,
        client_tls.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n")
        return b"".join(iter(lambda: tls.recv(65536), b""))


def test_bad_hosts_get_400_and_one_short_log_line(daphne_tls, client_tls):
    answers = [bad_host_request(daphne_tls.port, client_tls) for _ in range(5)]
    assert all(answer.startswith(b"HTTP/1.1 400") for answer in answers)
    log = daphne_tls.log()
    assert log.count("Invalid HTTP_HOST header: 'evil.test'") == 1
    assert "(from 127.0.0.1; said once a minute per address)" in log
    assert "Traceback" not in log


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
