"""Each request's headers have REALTIME_WS_HANDSHAKE_TIMEOUT seconds in total and its body
REALTIME_HTTP_BODY_MIN_RATE bytes a second (realtime/server/request_deadline.py), with 3 s and
1,000 bytes a second here: on plain `daphne` over TLS and under `manage.py serve` (whose
workers run realtime-daphne). Then the per-address connection cap
(realtime/server/address_cap.py) on `serve`'s TLS and redirect listeners.

Twisted's idle timer alone (the same 3 s) would let a client that sends a byte every half
second hold its connection for ever; the deadlines drop it. Requests and WebSockets that
finish in time keep the connection as before.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest

from tests.helpers import (
    PYTHON,
    daphne_tls_args,
    free_port,
    receive_json,
    wait_for_port,
    ws_connect,
)

DEADLINE = 3
BODY_RATE = 1000


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
    start(
        args,
        port,
        REALTIME_WS_HANDSHAKE_TIMEOUT=str(DEADLINE),
        REALTIME_HTTP_BODY_MIN_RATE=str(BODY_RATE),
    )
    return port


def tls_connection(port: int, client_tls: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return client_tls.wrap_socket(raw, server_hostname="localhost")


def closed_by_server(connection: socket.socket, wait: float) -> bool:
    """Whether the server closed the connection (read returns nothing or fails) within `wait`."""
    connection.settimeout(wait)
    try:
        return connection.recv(1024) == b""
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True


def trickle_until_dropped(connection: socket.socket, give_up_after: float) -> tuple[float, float]:
    """Send a byte every half second until the server drops the connection.

    Returns (when it was dropped, when the last byte went), by time.monotonic()."""
    started = last_byte = time.monotonic()
    while not closed_by_server(connection, 0.5):
        assert time.monotonic() - started < give_up_after, "the trickle was never cut off"
        try:
            connection.sendall(b"a")
        except (ConnectionError, ssl.SSLError):
            break
        last_byte = time.monotonic()
    return time.monotonic(), last_byte


def test_a_request_trickled_a_byte_at_a_time_is_dropped_at_the_deadline(server, client_tls):
    started = time.monotonic()
    with tls_connection(server, client_tls) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        dropped, last_byte = trickle_until_dropped(connection, DEADLINE + 5)
    assert dropped - started >= DEADLINE - 0.5
    # Bytes kept coming every half second: the idle timer (also 3 s) never ran out.
    assert dropped - last_byte < 1.5


def test_a_body_slower_than_the_minimum_rate_is_dropped(server, client_tls):
    length = 2000  # at 1,000 bytes a second: 3 + 2 s
    with tls_connection(server, client_tls) as connection:
        connection.sendall(
            b"POST /accounts/login/ HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {length}\r\n\r\n".encode()
        )
        headers_done = time.monotonic()
        dropped, last_byte = trickle_until_dropped(connection, DEADLINE + length / BODY_RATE + 5)
    assert dropped - headers_done >= DEADLINE + length / BODY_RATE - 1
    assert dropped - last_byte < 1.5  # the body kept coming: only the deadline cut it


def test_a_body_at_a_normal_pace_is_answered(server, client_tls):
    body = b"username=nobody&password=" + b"x" * 1975
    with tls_connection(server, client_tls) as connection:
        connection.sendall(
            b"POST /accounts/login/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for part in range(4):
            connection.sendall(body[part * 500 : (part + 1) * 500])
            time.sleep(0.3)
        assert read_response(connection).startswith(b"HTTP/1.1 ")


def read_response(connection: ssl.SSLSocket) -> bytes:
    """One response: its headers and a Content-Length body."""
    connection.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        0,
    )  # fmt: skip
    while len(body) < length:
        body += connection.recv(4096)
    return head + b"\r\n\r\n" + body


def test_the_next_request_on_a_kept_alive_connection_has_its_own_deadline(server, client_tls):
    with tls_connection(server, client_tls) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(connection).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        dropped, last_byte = trickle_until_dropped(connection, DEADLINE + 5)
    assert dropped - answered >= DEADLINE - 0.5
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


# --- At most N connections per client address ------------------------------------------------

CAP = 4


@pytest.fixture(scope="module")
def capped(start, dev_certs):
    """serve with a TLS and a redirect listener, at most CAP connections per address on each."""
    port, http_port = free_port(), free_port()
    server = start(
        [*command("serve", port, dev_certs), "--redirect-http", str(http_port)],
        port,
        REALTIME_MAX_CONNECTIONS_PER_ADDRESS=str(CAP),
    )
    wait_for_port(http_port, server.process, 30)
    return server, port, http_port


def accepted_and_kept(connection: socket.socket) -> bool:
    """False if the server closes a fresh connection at once (refused past the cap)."""
    return not closed_by_server(connection, 1.0)


def refused(connection: socket.socket) -> bool:
    """Whether the server closes a fresh connection well before the 10 s handshake deadline
    would: generous, because a loaded CI machine once took over a second to accept and close."""
    return closed_by_server(connection, 5.0)


def accepted_once_the_server_sees_the_close(port: int, within: float = 5.0) -> bool:
    """A new connection, tried again while refused (a refused one frees nothing), is kept."""
    deadline = time.monotonic() + within
    while True:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as again:
            if accepted_and_kept(again):
                return True
        if time.monotonic() > deadline:
            return False


@pytest.mark.parametrize("listener", ["TLS", "redirect"])
def test_connections_past_the_cap_per_address_are_closed_before_tls(capped, listener):
    server, port, http_port = capped
    target = port if listener == "TLS" else http_port
    held = [socket.create_connection(("127.0.0.1", target), timeout=10) for _ in range(CAP)]
    try:
        assert all(accepted_and_kept(c) for c in held[:1])
        with socket.create_connection(("127.0.0.1", target), timeout=10) as extra:
            assert refused(extra)
        held.pop().close()
        assert accepted_once_the_server_sees_the_close(target)
    finally:
        for connection in held:
            connection.close()
    line = f"Refused connections from 127.0.0.1 on the {listener} listener: {CAP} open already"
    assert server.log().count(line) == 1


def test_an_ipv6_host_is_counted_by_its_64():
    from twisted.internet.address import IPv4Address, IPv6Address

    from realtime.server.address_cap import AddressCap, address_key

    assert address_key(IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 443)) == "2001:db8:1:2::/64"
    assert address_key(IPv6Address("TCP", "::ffff:192.0.2.7", 443)) == "192.0.2.7"
    cap = AddressCap(2, "TLS")
    keys = [cap.admit(IPv6Address("TCP", f"2001:db8:1:2::{n}", 1)) for n in range(1, 4)]
    assert keys[2] is None  # a third address in the same /64
    assert cap.admit(IPv6Address("TCP", "2001:db8:1:3::1", 1)) is not None  # another /64
    assert cap.admit(IPv4Address("TCP", "192.0.2.8", 1)) is not None
    cap.release(keys[0])
    assert cap.admit(IPv6Address("TCP", "2001:db8:1:2::9", 1)) is not None


def test_the_redirect_listener_drops_a_trickled_request_at_the_deadline(start, dev_certs):
    port, http_port = free_port(), free_port()
    server = start(
        [*command("serve", port, dev_certs), "--redirect-http", str(http_port)],
        port,
        REALTIME_WS_HANDSHAKE_TIMEOUT=str(DEADLINE),
    )
    wait_for_port(http_port, server.process, 30)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", http_port), timeout=10) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        dropped, last_byte = trickle_until_dropped(connection, DEADLINE + 5)
    assert dropped - started >= DEADLINE - 0.5
    assert dropped - last_byte < 1.5  # Twisted's idle timer alone never ran out
