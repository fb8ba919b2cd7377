"""A connection's first request has REALTIME_WS_HANDSHAKE_TIMEOUT seconds in total
(realtime/server/request_deadline.py), with the deadline set to 3 s: on plain `daphne` over TLS
and under `manage.py serve` (whose workers run realtime-daphne).

Twisted's idle timer alone (the same 3 s) would let a client that sends a byte every half
second hold its connection for ever; the deadline drops it. Requests and WebSockets that
finish their headers in time keep the connection as before.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest

from tests.helpers import PYTHON, daphne_tls_args, free_port, receive_json, ws_connect

DEADLINE = 3


def command(kind: str, port: int, certs) -> list[str]:
    if kind == "daphne":
        return daphne_tls_args(port, certs)
    return [
        PYTHON, "manage.py", "serve", "--workers", "1", "--port", str(port),
        "--cert", str(certs.cert), "--key", str(certs.key),
    ]  # fmt: skip


@pytest.fixture(scope="module", params=["daphne", "serve"])
def server(request, start, dev_certs):
    port = free_port()
    args = command(request.param, port, dev_certs)
    start(args, port, REALTIME_WS_HANDSHAKE_TIMEOUT=str(DEADLINE))
    return port


def tls_connection(port: int, client_tls: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return client_tls.wrap_socket(raw, server_hostname="localhost")


def closed_by_server(connection: ssl.SSLSocket, wait: float) -> bool:
    """Whether the server closed the connection (read returns nothing or fails) within `wait`."""
    connection.settimeout(wait)
    try:
        return connection.recv(1024) == b""
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True


def test_a_request_trickled_a_byte_at_a_time_is_dropped_at_the_deadline(server, client_tls):
    started = time.monotonic()
    connection = tls_connection(server, client_tls)
    with connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        last_byte = time.monotonic()
        while not closed_by_server(connection, 0.5):
            assert time.monotonic() - started < DEADLINE + 5, "the trickle was never cut off"
            try:
                connection.sendall(b"a")
            except (ConnectionError, ssl.SSLError):
                break
            last_byte = time.monotonic()
    dropped = time.monotonic()
    assert dropped - started >= DEADLINE - 0.5
    # Bytes kept coming every half second: the idle timer (also 3 s) never ran out.
    assert dropped - last_byte < 1.5


def test_headers_sent_slowly_but_within_the_deadline_are_answered(server, client_tls):
    with tls_connection(server, client_tls) as connection:
        lines = (b"GET /healthz HTTP/1.1\r\n", b"Host: localhost\r\n", b"Connection: close\r\n")
        for line in lines:
            connection.sendall(line)
            time.sleep(0.5)
        connection.sendall(b"\r\n")
        connection.settimeout(10)
        response = b""
        while chunk := connection.recv(4096):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200 ")


def test_a_websocket_outlives_the_deadline(server, client_tls):
    async def scenario():
        async with ws_connect(f"wss://localhost:{server}/ws/", client_tls) as socket_:
            await receive_json(socket_)
            await asyncio.sleep(DEADLINE + 1.5)
            await socket_.send('{"type": "ping"}')
            return await receive_json(socket_)

    assert asyncio.run(scenario()) == {"type": "pong"}
