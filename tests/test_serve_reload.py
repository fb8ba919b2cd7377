"""HTTPS only, and certificates renewed without a gap: `serve`'s HTTP redirect port, HSTS on
every HTTPS response, and the rolling restart on SIGHUP.

The rolling-restart test renews the leaf certificate (same dev CA, new serial), sends SIGHUP,
and meanwhile handshakes with the port back to back from a thread: none may fail, and the
certificate presented switches to the new serial. Clients verify against the test's own CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from twisted.internet.testing import MemoryReactorClock
from websockets.exceptions import ConnectionClosed

from realtime.server.endpoints import DRAIN, stop_accepting_on_shutdown
from realtime.server.redirect import redirect_endpoint, redirect_location, redirect_status
from realtime.tls.devca import DevCertPaths, ensure_dev_certificate
from tests.helpers import PYTHON, free_port, receive_json, wait_for_port
from tests.test_serve import alive, clients_on, eventually, ping, serve_args, started, welcomed

# --- Stopping: what a worker's listening socket does on SIGTERM (pure) ----------------------


class RecordingPort:
    """Stands in for a tcp.Port: records what the shutdown trigger asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def doRead(self) -> None:
        self.calls.append("accept what the kernel queued")

    def stopListening(self) -> None:
        self.calls.append("stop listening")


def test_a_stopping_server_takes_what_is_queued_then_stops_listening_then_drains():
    reactor = MemoryReactorClock()
    port = RecordingPort()
    stop_accepting_on_shutdown(port, reactor)
    [(trigger, args, kwargs)] = reactor.triggers["before"]["shutdown"]
    drained = []
    trigger(*args, **kwargs).addCallback(drained.append)
    assert port.calls == ["accept what the kernel queued", "stop listening"]
    assert not drained  # connections already accepted get DRAIN seconds before the close
    reactor.advance(DRAIN)
    assert drained == [None]


def test_a_stopping_server_leaves_what_is_queued_on_a_shared_socket_to_its_successor():
    reactor = MemoryReactorClock()
    port = RecordingPort()
    stop_accepting_on_shutdown(port, reactor, take_queued=False)
    [(trigger, args, kwargs)] = reactor.triggers["before"]["shutdown"]
    trigger(*args, **kwargs)
    assert port.calls == ["stop listening"]


# --- The redirect (pure) ---------------------------------------------------------------------

ALLOWED = ["localhost", "127.0.0.1", "[::1]", ".example.org"]


@pytest.mark.parametrize(
    ("host", "https_port", "target", "location"),
    [
        ("localhost:8080", 8443, "/a/b?c=1&d=%20", "https://localhost:8443/a/b?c=1&d=%20"),
        ("app.example.org", 443, "/", "https://app.example.org/"),
        ("APP.example.org.:80", 443, "/x", "https://app.example.org/x"),
        ("[::1]:80", 8443, "/ws/", "https://[::1]:8443/ws/"),
        ("localhost", 443, "http://elsewhere.test/p?q", "https://localhost/p?q"),
        ("localhost", 443, "/a b\r\nSet-Cookie: x", "https://localhost/a%20b%0D%0ASet-Cookie:%20x"),
    ],
)
def test_the_location_keeps_host_and_path_and_drops_port_443(host, https_port, target, location):
    assert redirect_location(host, https_port, target, ALLOWED) == location


@pytest.mark.parametrize("host", [None, "", "evil.test", "localhost.evil.test", "bad host"])
def test_a_missing_or_foreign_host_gets_no_location(host):
    assert redirect_location(host, 443, "/", ALLOWED) is None


def test_get_and_head_get_301_and_other_methods_308():
    assert [redirect_status(m) for m in ("GET", "HEAD", "POST", "PUT")] == [301, 301, 308, 308]


def test_the_redirect_endpoint_string():
    assert redirect_endpoint(80, 443, "[::]", reuse_port=True) == (
        "realtime-redirect:80:httpsPort=443:interface=\\:\\::reusePort=yes"
    )


# --- The redirect port, for real -------------------------------------------------------------


def plain_request(
    port: int,
    method: str = "GET",
    path: str = "/",
    host: str | None = None,
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    """One plain HTTP request, redirects not followed."""
    connection = http.client.HTTPConnection("localhost", port, timeout=10)
    headers = {**(headers or {}), **({"Host": host} if host else {})}
    connection.request(method, path, body=b"x=1" if method == "POST" else None, headers=headers)
    response = connection.getresponse()
    response.body = response.read()
    connection.close()
    return response


@pytest.fixture(scope="module")
def serve_redirect(start):
    port, http_port = free_port(), free_port()
    server = start(serve_args(port, 1, "--redirect-http", str(http_port)), port)
    wait_for_port(http_port, server.process, 30)  # listening just after the TLS port
    return server, port, http_port


def test_plain_http_is_redirected_to_https(serve_redirect):
    server, port, http_port = serve_redirect
    response = plain_request(http_port, path="/some/page?x=1")
    assert response.status == 301
    assert response.getheader("Location") == f"https://localhost:{port}/some/page?x=1"
    assert response.getheader("Server") is None  # no banner (Twisted would name itself)
    assert b'id="connection"' not in response.body
    assert f"Redirecting http://127.0.0.1:{http_port}/ to HTTPS." in server.log()


def test_a_post_is_redirected_with_308(serve_redirect):
    _, port, http_port = serve_redirect
    response = plain_request(http_port, "POST", "/accounts/login/")
    assert response.status == 308
    assert response.getheader("Location") == f"https://localhost:{port}/accounts/login/"


def test_a_foreign_host_gets_400(serve_redirect):
    _, _, http_port = serve_redirect
    response = plain_request(http_port, host="evil.test")
    assert response.status == 400
    assert response.getheader("Location") is None


def test_no_websocket_is_served_over_the_plain_port(serve_redirect):
    _, port, http_port = serve_redirect
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Origin": f"http://localhost:{http_port}",
    }
    response = plain_request(http_port, path="/ws/", headers=upgrade)
    assert response.status == 301  # not 101 Switching Protocols
    assert response.getheader("Location") == f"https://localhost:{port}/ws/"


def test_following_the_redirect_reaches_the_page_over_https(serve_redirect, client_tls):
    _, port, http_port = serve_redirect
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=client_tls))
    with opener.open(f"http://localhost:{http_port}/", timeout=10) as response:
        assert response.url == f"https://localhost:{port}/"
        assert response.status == 200
        assert 'id="connection"' in response.read().decode()
        assert "max-age=31536000" in response.headers["Strict-Transport-Security"]


def test_runserver_tls_can_redirect_plain_http_too(start):
    port, http_port = free_port(), free_port()
    args = ["runserver", "--tls", "--redirect-http", str(http_port), f"127.0.0.1:{port}"]
    server = start([PYTHON, "manage.py", *args], port)
    # The redirect endpoint starts listening just after the TLS one.
    wait_for_port(http_port, server.process, 30)
    response = plain_request(http_port, path="/admin/")
    assert response.status == 301
    assert response.getheader("Location") == f"https://localhost:{port}/admin/"


# --- HSTS on every HTTPS response ------------------------------------------------------------


def https_headers(url: str, tls: ssl.SSLContext) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, context=tls, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/", 200), ("/static/realtime/page.mjs", 200), ("/no/such/page/", 404)],
    ids=["page", "static file (WhiteNoise)", "404"],
)
def test_every_https_response_carries_hsts(serve_redirect, client_tls, path, status):
    _, port, _ = serve_redirect
    got, headers = https_headers(f"https://localhost:{port}{path}", client_tls)
    assert got == status
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


# --- SIGHUP: rolling restart -----------------------------------------------------------------


def serial(certificate: bytes | Path) -> int:
    if isinstance(certificate, Path):
        return x509.load_pem_x509_certificate(certificate.read_bytes()).serial_number
    return x509.load_der_x509_certificate(certificate).serial_number


def renew(certs: DevCertPaths) -> int:
    """Issue a new leaf from the same CA, as a renewal would, and return its serial."""
    certs.cert.unlink()
    ensure_dev_certificate(certs.cert.parent)
    return serial(certs.cert)


def handshake_serial(port: int, tls: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        tls.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        return serial(connection.getpeercert(binary_form=True))


class Prober(threading.Thread):
    """Full TLS handshakes with the port, back to back, until stopped; records each outcome."""

    def __init__(self, port: int, tls: ssl.SSLContext) -> None:
        super().__init__(daemon=True)
        self.port, self.tls = port, tls
        self.serials: list[int] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.serials.append(handshake_serial(self.port, self.tls))
            except OSError as exc:
                self.failures.append(f"{time.monotonic():.3f} {exc!r}")
            time.sleep(0.005)

    def __enter__(self) -> Prober:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.join(timeout=15)


async def socket_on(stack: contextlib.AsyncExitStack, url: str, tls, worker: str):
    """An open WebSocket welcomed by `worker` (others that land elsewhere are closed)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        inner = contextlib.AsyncExitStack()
        name, socket_ = await welcomed(inner, url, tls)
        if name == worker:
            stack.push_async_exit(inner)
            return socket_
        await inner.aclose()
    raise AssertionError(f"no client reached {worker}")


def test_sighup_replaces_the_workers_one_at_a_time_with_the_renewed_certificate(
    start, redis_server, tmp_path
):
    certs = ensure_dev_certificate(tmp_path / "certs").paths
    tls = ssl.create_default_context(cafile=str(certs.ca_cert))
    first_serial, port = serial(certs.cert), free_port()
    tls_files = ("--cert", str(certs.cert), "--key", str(certs.key))
    server = start(serve_args(port, 2, *tls_files), port, REDIS_URL=redis_server.url)
    url = f"wss://localhost:{port}/ws/"
    old = dict(started(server.log()))

    def replaced(name: str) -> bool:
        return f"worker {name} (pid {old[name]}) stopped with code" in server.log()

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            clients = await clients_on(stack, url, tls, {"w1", "w2"})
            renewed_serial = renew(certs)
            with Prober(port, tls) as probe:
                server.process.send_signal(signal.SIGHUP)
                await eventually(lambda: replaced("w1"), 60, "w1 replaced")
                # w2 has not been touched yet: its clients go on as if nothing happened.
                for socket_ in clients["w2"]:
                    assert await ping(socket_) == {"type": "pong"}
                new_w1 = await socket_on(stack, url, tls, "w1")
                await eventually(lambda: "reload done" in server.log(), 60, "reload done")
                # ... and the new w1's client kept working while w2 was replaced.
                assert await ping(new_w1) == {"type": "pong"}
            for socket_ in clients["w1"] + clients["w2"]:
                with pytest.raises(ConnectionClosed):  # their old processes are gone
                    await receive_json(socket_, timeout=10)
            return renewed_serial, probe

    renewed_serial, probe = asyncio.run(scenario())
    assert renewed_serial != first_serial
    assert probe.failures == [], f"{len(probe.failures)} of {len(probe.serials)} handshakes failed"
    assert len(probe.serials) > 50, "the probe ran too little to show anything"
    assert probe.serials[0] == first_serial and probe.serials[-1] == renewed_serial
    assert {handshake_serial(port, tls) for _ in range(10)} == {renewed_serial}
    log = server.log()
    new = {name: pid for name, pid in started(log) if pid not in old.values()}
    assert set(new) == {"w1", "w2"}
    for name in ("w1", "w2"):  # each new process was ready before its predecessor was stopped
        ready = log.index(f"worker {name} (pid {new[name]}) is ready")
        stopping = log.index(f"worker {name} (pid {old[name]}) replaced by pid {new[name]}")
        assert log.index(f"worker {name} started (pid {new[name]})") < ready < stopping
        assert stopping < log.index(f"worker {name} (pid {old[name]}) stopped with code 0")
        assert not alive(old[name]) and alive(new[name])


def test_a_reload_with_a_broken_certificate_keeps_the_running_worker(start, tmp_path):
    certs = ensure_dev_certificate(tmp_path / "certs").paths
    tls = ssl.create_default_context(cafile=str(certs.ca_cert))
    port = free_port()
    server = start(serve_args(port, 1, "--cert", str(certs.cert), "--key", str(certs.key)), port)
    [(_, old)] = started(server.log())
    serving = serial(certs.cert)
    certs.cert.write_text("not a certificate\n")
    server.process.send_signal(signal.SIGHUP)
    asyncio.run(eventually(lambda: "reload stopped" in server.log(), 60, "the reload gives up"))
    failed = re.search(r"w1 \(pid \d+\) exited with code \d+ before it was ready", server.log())
    assert failed, server.log()
    assert f"pid {old} keeps serving" in server.log()
    assert alive(old)
    assert handshake_serial(port, tls) == serving  # still the certificate it loaded at start


def test_a_request_with_credentials_over_plain_http_is_refused_not_redirected(serve_redirect):
    """Followed, a redirect would work, and nobody would notice the token crossed in clear."""
    _, _, http_port = serve_redirect
    headers = {"Authorization": "Bearer rtk_sent_in_clear"}
    response = plain_request(http_port, "POST", "/api/publish", headers=headers)
    assert response.status == 400
    assert response.getheader("Location") is None
    assert b"over HTTPS only" in response.body
