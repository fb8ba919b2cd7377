"""The client's real address (realtime/server/client_address.py, proxy_protocol.py): the rules
on their own, then the attacks of issue 25 against real `serve --workers 2` processes:

- TLS served directly, with DJANGO_TRUST_PROXY_HEADERS=1 (the combination the docs once
  advised for TLS passthrough): a client's own X-Forwarded-For opens nothing and escapes no cap;
- `serve --proxy-protocol`: the address in a PROXY v2 header, from a trusted peer only, decides
  both caps and the access log; a connection without a header, or from another peer, is closed.

The nginx (appending X-Forwarded-For) and HAProxy (send-proxy-v2) recipes are tested in
test_nginx.py and test_hosts.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime.common.addresses import client_key
from realtime.server.client_address import ClientPolicy, TrustedProxies, forwarded_client
from tests.helpers import (
    PYTHON,
    close_code,
    free_port,
    receive_json,
    status_from,
    wait_until,
    ws_connect,
)

TRUSTED = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
CAP = 2  # REALTIME_WS_MAX_PER_CLIENT in the servers below
TCP_CAP = 4  # REALTIME_MAX_CONNECTIONS_PER_ADDRESS in the PROXY-protocol server
HANDSHAKE = 2  # REALTIME_WS_HANDSHAKE_TIMEOUT in the PROXY-protocol server
WORKERS = 2


# --- The rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines, client",
    [
        ([], "127.0.0.1"),  # no header: the (trusted) peer itself
        (["203.0.113.9"], "203.0.113.9"),
        (["198.51.100.1, 203.0.113.9"], "203.0.113.9"),  # the left entry is the client's word
        (["198.51.100.1", "203.0.113.9"], "203.0.113.9"),  # a second line, appended by a proxy
        (["203.0.113.9", "10.1.2.3"], "203.0.113.9"),  # a trusted proxy's hop is skipped
        (["10.1.2.3, 127.0.0.1"], "10.1.2.3"),  # all trusted: the furthest one
        (["203.0.113.9:5555"], "203.0.113.9"),  # a port, as some balancers write it
        (["[2001:db8::7]:443"], "2001:db8::7"),
        (["203.0.113.9, not-an-address"], "127.0.0.1"),  # garbage: the proxy did not write it
    ],
)
def test_the_right_most_entry_a_trusted_proxy_did_not_write_is_the_client(lines, client):
    assert forwarded_client("127.0.0.1", lines, TRUSTED) == client


class Peer:
    def __init__(self, host: str, port: int = 5000) -> None:
        self.host, self.port = host, port


SCOPE = {
    "type": "http",
    "client": ["203.0.113.1", 1],  # daphne --proxy-headers' first entry: never believed
    "headers": [
        (b"x-forwarded-for", b"203.0.113.1, 198.51.100.2"),
        (b"x-forwarded-proto", b"https"),
        (b"host", b"localhost"),
    ],
}


def test_a_trusted_proxy_on_a_plain_connection_is_believed():
    scope = ClientPolicy(TRUSTED, True).resolve(SCOPE, Peer("127.0.0.1"), over_tls=False)
    assert scope["client"] == ["198.51.100.2", 0]
    assert (b"x-forwarded-proto", b"https") in scope["headers"]


@pytest.mark.parametrize(
    "peer, over_tls, forwarded_headers",
    [
        ("198.51.100.50", False, True),  # not a trusted proxy
        ("127.0.0.1", True, True),  # over TLS nothing between could have written them
        ("127.0.0.1", False, False),  # the project trusts no proxy headers at all
    ],
)
def test_anyone_else_is_the_peer_and_their_forwarding_headers_are_removed(
    peer, over_tls, forwarded_headers
):
    policy = ClientPolicy(TRUSTED, forwarded_headers)
    scope = policy.resolve(SCOPE, Peer(peer), over_tls=over_tls)
    assert scope["client"] == [peer, 5000]
    assert scope["headers"] == [(b"host", b"localhost")]


def test_ipv6_clients_count_by_their_64():
    assert client_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("") == ""


def test_a_trusted_proxy_that_is_no_address_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'proxy.internal' is not an IP address"):
        TrustedProxies(["127.0.0.1", "proxy.internal"])


def test_the_setting_is_checked(settings):
    from realtime.checks import check_trusted_proxies

    settings.REALTIME_TRUSTED_PROXIES = "10.0.0.1"  # a string, not a list
    assert [e.id for e in check_trusted_proxies()] == ["realtime.E008"]
    settings.REALTIME_TRUSTED_PROXIES = ["10.0.0.0/8", "::1"]
    assert check_trusted_proxies() == []


# --- Real servers ---------------------------------------------------------------------------


def serve_args(port: int, certs, *extra: str) -> list[str]:
    return [PYTHON, "manage.py", "serve", "--workers", str(WORKERS), "--port", str(port),
            "--cert", str(certs.cert), "--key", str(certs.key), *extra]  # fmt: skip


def fetch(port: int, path: str, tls, source: str, **headers: str) -> int:
    request = urllib.request.Request(f"https://localhost:{port}{path}", headers=headers)
    return status_from(source, request, tls)


async def outcome(socket_) -> str | int | None:
    """ "welcome", or the close code of a socket refused after its accept."""
    try:
        return (await receive_json(socket_))["type"]
    except ConnectionClosed:
        return await close_code(socket_)


@pytest.fixture(scope="module")
def tls_trusting_headers(start, dev_certs, redis_server):
    """TLS served directly, yet told to trust proxy headers, and /metrics for 127.0.0.1 only."""
    port = free_port()
    return start(
        serve_args(port, dev_certs),
        port,
        REDIS_URL=redis_server.url,
        DJANGO_TRUST_PROXY_HEADERS="1",
        REALTIME_METRICS_ALLOWED_ADDRESSES="127.0.0.1/32",
        REALTIME_WS_MAX_PER_CLIENT=str(CAP),
    )


@pytest.mark.e2e
def test_over_tls_a_clients_own_x_forwarded_for_does_not_open_metrics(
    tls_trusting_headers, client_tls
):
    port = tls_trusting_headers.port
    assert fetch(port, "/metrics", client_tls, "127.0.0.1") == 200
    forged = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}
    assert fetch(port, "/metrics", client_tls, "127.0.0.2", **forged) == 403
    assert "never believed on TLS connections" in tls_trusting_headers.log()


@pytest.mark.e2e
def test_over_tls_a_new_x_forwarded_for_per_socket_does_not_escape_the_cap(
    tls_trusting_headers, client_tls
):
    url = f"wss://localhost:{tls_trusting_headers.port}/ws/"

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            results = []
            for n in range(WORKERS * CAP + 2):
                socket_ = await stack.enter_async_context(
                    ws_connect(url, client_tls, local_addr=("127.0.0.2", 0),
                               additional_headers={"X-Forwarded-For": f"203.0.113.{n}"})
                )  # fmt: skip
                results.append(await outcome(socket_))
            return results

    results = asyncio.run(scenario())
    assert results.count("welcome") <= WORKERS * CAP
    assert 1013 in results


def proxy_v2_header(source: str, source_port: int = 40000) -> bytes:
    """A PROXY protocol v2 header (PROXY command, TCP over IPv4), as HAProxy's send-proxy-v2."""
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    addresses += struct.pack("!HH", source_port, 443)
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def connected(port: int, header: bytes | None, local: str = "127.0.0.1") -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(local, 0))
    if header is not None:
        raw.sendall(header)
    return raw


def tls_handshake(port: int, tls, header: bytes | None, local: str = "127.0.0.1") -> bool:
    """Whether a TLS handshake completes on a connection that starts with `header`."""
    raw = connected(port, header, local)
    try:
        with tls.wrap_socket(raw, server_hostname="localhost") as connection:
            # None: the server had already reset the socket, and Python skipped the handshake.
            return connection.version() is not None
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return False
    finally:
        raw.close()


@pytest.fixture(scope="module")
def behind_proxy_protocol(start, dev_certs, redis_server):
    port = free_port()
    return start(
        serve_args(port, dev_certs, "--proxy-protocol"),
        port,
        REDIS_URL=redis_server.url,
        REALTIME_TRUSTED_PROXIES="127.0.0.1",
        REALTIME_WS_MAX_PER_CLIENT=str(CAP),
        REALTIME_MAX_CONNECTIONS_PER_ADDRESS=str(TCP_CAP),
        REALTIME_ACCESS_LOG="1",
        REALTIME_LOG_FORMAT="json",  # the access log's client field is in the JSON line
        REALTIME_WS_HANDSHAKE_TIMEOUT=str(HANDSHAKE),
    )


async def open_as(port: int, tls, source: str, stack) -> str | int | None:
    """A WebSocket through a PROXY header naming `source`: its welcome or close code."""
    raw = connected(port, proxy_v2_header(source))
    raw.setblocking(False)
    url = f"wss://localhost:{port}/ws/"
    socket_ = await stack.enter_async_context(
        connect(url, sock=raw, ssl=tls, server_hostname="localhost",
                origin=f"https://localhost:{port}", open_timeout=10)
    )  # fmt: skip
    return await outcome(socket_)


@pytest.mark.e2e
def test_the_proxy_headers_address_is_what_the_socket_cap_counts_and_logs(
    behind_proxy_protocol, client_tls
):
    port = behind_proxy_protocol.port

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            same = [
                await open_as(port, client_tls, "198.51.100.7", stack)
                for _ in range(WORKERS * CAP + 2)
            ]
            others = [
                await open_as(port, client_tls, f"198.51.100.{n}", stack) for n in range(20, 26)
            ]
            return same, others

    same, others = asyncio.run(scenario())
    assert same.count("welcome") <= WORKERS * CAP and 1013 in same
    # The same balancer address for all of them: six more clients, each within its own cap.
    assert others == ["welcome"] * 6
    wait_until(
        lambda: '"client": "198.51.100.20:40000"' in behind_proxy_protocol.log(),
        "the access log line",
    )


@pytest.mark.e2e
def test_the_tcp_cap_counts_the_address_in_the_proxy_header(behind_proxy_protocol, client_tls):
    port = behind_proxy_protocol.port
    with contextlib.ExitStack() as stack:
        held = []
        for _ in range(WORKERS * TCP_CAP + 2):
            raw = stack.enter_context(connected(port, proxy_v2_header("198.51.100.9")))
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                connection = client_tls.wrap_socket(raw, server_hostname="localhost")
                if stack.enter_context(connection).version() is not None:
                    held.append(connection)
        assert TCP_CAP <= len(held) <= WORKERS * TCP_CAP
        assert tls_handshake(port, client_tls, proxy_v2_header("198.51.100.10"))


@pytest.mark.e2e
def test_a_connection_that_sends_only_the_header_is_counted_at_once(
    behind_proxy_protocol, client_tls
):
    """A balancer sends the header as soon as its client connects: a client that then says
    nothing still holds one of its address's connections (before the handshake deadline)."""
    port = behind_proxy_protocol.port
    with contextlib.ExitStack() as stack:
        for _ in range(6 * WORKERS * TCP_CAP):
            stack.enter_context(connected(port, proxy_v2_header("198.51.100.12")))
        assert not tls_handshake(port, client_tls, proxy_v2_header("198.51.100.12"))
        assert tls_handshake(port, client_tls, proxy_v2_header("198.51.100.13"))


@pytest.mark.e2e
def test_a_connection_without_the_header_or_from_an_untrusted_peer_is_closed(
    behind_proxy_protocol, client_tls
):
    port = behind_proxy_protocol.port
    assert tls_handshake(port, client_tls, proxy_v2_header("198.51.100.11"))
    assert not tls_handshake(port, client_tls, None)  # TLS at once: no header
    # A header naming anyone, from a peer that is not a trusted proxy: closed unread.
    assert not tls_handshake(port, client_tls, proxy_v2_header("127.0.0.1"), local="127.0.0.2")
    log = behind_proxy_protocol.log()
    assert "Refused a connection from 127.0.0.2" in log


class UnixPeer:
    host = None
    port = None


def test_behind_a_unix_socket_the_proxys_entry_is_believed_when_headers_are():
    """daphne -u / --fd behind nginx: only local processes reach the socket file, as loopback."""
    believed = ClientPolicy(TRUSTED, True).resolve(SCOPE, UnixPeer(), over_tls=False)
    assert believed["client"] == ["198.51.100.2", 0]
    assert (b"x-forwarded-proto", b"https") in believed["headers"]
    ignored = ClientPolicy(TRUSTED, False).resolve(SCOPE, UnixPeer(), over_tls=False)
    assert ignored["headers"] == [(b"host", b"localhost")]


@pytest.mark.parametrize("host", [b"x:abc", b"localhost:99999", b"[::1"])
def test_a_host_header_that_is_no_host_is_refused_not_a_traceback(host):
    from realtime.websocket.middleware import SecureSameSiteOrigin

    scope = {"headers": [(b"origin", b"https://localhost:8443"), (b"host", host)]}
    assert SecureSameSiteOrigin.refusal(scope) == "the Origin or Host header is not valid"


def seconds_until_closed(raw: socket.socket, limit: float) -> float:
    """How long the server takes to close a connection this side keeps silent."""
    started = time.monotonic()
    raw.settimeout(limit)
    with contextlib.suppress(ConnectionError):
        while raw.recv(1024):
            pass
    return time.monotonic() - started


@pytest.mark.e2e
@pytest.mark.parametrize("sends", [b"", "header"])
def test_a_silent_connection_is_dropped_past_the_handshake_deadline(behind_proxy_protocol, sends):
    """Nothing at all, or only the header: either way dropped after REALTIME_WS_HANDSHAKE_TIMEOUT
    seconds, so neither can hold a worker's descriptors (or an address's slot) for longer."""
    header = proxy_v2_header("198.51.100.14") if sends == "header" else None
    with connected(behind_proxy_protocol.port, header) as raw:
        waited = seconds_until_closed(raw, HANDSHAKE + 10)
    assert HANDSHAKE - 0.5 <= waited < HANDSHAKE + 5
