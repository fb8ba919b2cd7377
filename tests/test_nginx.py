"""Behind nginx: Debian's nginx runs deploy/nginx/realtime.conf (only the port, the
certificate, the name and the workers' address changed) with the dev certificate, in front of
`serve --plain` workers with DJANGO_TRUST_PROXY_HEADERS=1.

The shipped site appends to X-Forwarded-For, as most balancers do: the attacks of issue 25
(a new X-Forwarded-For per attempt to escape a limit, a victim's address to lock them out) are
made through it from several loopback addresses (127.0.0.x: distinct clients to nginx)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import ssl
import subprocess
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import (
    PYTHON,
    ROOT,
    BrowserSession,
    close_code,
    create_user,
    free_port,
    receive_json,
    status_from,
    wait_for_port,
    ws_connect,
)
from tests.netns import stop

pytestmark = pytest.mark.e2e

SITE = ROOT / "deploy" / "nginx" / "realtime.conf"
CAP = 2  # REALTIME_WS_MAX_PER_CLIENT for these tests
IDLE = 4  # REALTIME_WS_IDLE_TIMEOUT for these tests
SIGNIN_LIMIT = 4  # REALTIME_SIGNIN_MAX_PER_ADDRESS (and REALTIME_API_RATE_LIMIT) for these tests


def site_config(port: int, workers_port: int, certs) -> str:
    """The shipped site with this test's values; each must be there exactly once."""
    text = SITE.read_text()
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{workers_port};"),
        ("server_name app.example.com;", "server_name localhost;"),
        ("/etc/realtime/tls/fullchain.pem", str(certs.cert)),
        ("/etc/realtime/tls/privkey.pem", str(certs.key)),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def behind_nginx(start, dev_certs, tmp_path_factory):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not shutil.which(nginx):
        pytest.fail("nginx is missing (Debian package nginx; .ci/run installs it)")
    workers_port, port = free_port(), free_port()
    start(
        [PYTHON, "manage.py", "serve", "--plain", "--workers", "1", "--host", "127.0.0.1",
         "--port", str(workers_port)],
        workers_port,
        DJANGO_TRUST_PROXY_HEADERS="1",
        REALTIME_WS_MAX_PER_CLIENT=str(CAP),
        REALTIME_WS_IDLE_TIMEOUT=str(IDLE),
        REALTIME_SIGNIN_MAX_PER_ADDRESS=str(SIGNIN_LIMIT),
        REALTIME_API_RATE_LIMIT=str(SIGNIN_LIMIT),
        REALTIME_METRICS_ALLOWED_ADDRESSES="127.0.0.1/32",
    )  # fmt: skip
    work = tmp_path_factory.mktemp("nginx")
    (work / "site.conf").write_text(site_config(port, workers_port, dev_certs))
    (work / "nginx.conf").write_text(
        textwrap.dedent(
            f"""
            # The test's own main file around the shipped site (Debian's is /etc/nginx).
            user root;
            daemon off;
            pid {work}/nginx.pid;
            error_log {work}/error.log info;
            events {{ worker_connections 256; }}
            http {{
                access_log {work}/access.log;
                client_body_temp_path {work}/body;
                proxy_temp_path {work}/proxy;
                fastcgi_temp_path {work}/fastcgi;
                uwsgi_temp_path {work}/uwsgi;
                scgi_temp_path {work}/scgi;
                include {work}/site.conf;
            }}
            """
        )
    )
    with open(work / "stderr.log", "wb") as errors:
        process = subprocess.Popen(
            [nginx, "-c", str(work / "nginx.conf"), "-p", str(work)],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )
    try:
        wait_for_port(port, process, 15)
        yield port
    finally:
        stop(process)


def url(port: int) -> str:
    return f"wss://localhost:{port}/ws/"


def test_a_wss_client_through_nginx_is_secure(behind_nginx, client_tls):
    async def scenario():
        async with ws_connect(url(behind_nginx), client_tls) as socket_:
            return await receive_json(socket_)

    welcome = asyncio.run(scenario())
    assert welcome["type"] == "welcome"
    assert welcome["secure"] is True and welcome["scheme"] == "wss"


def test_origins_are_still_checked(behind_nginx, client_tls):
    async def scenario():
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(url(behind_nginx), client_tls, origin="https://evil.test"):
                pass
        return refused.value.response.status_code

    assert asyncio.run(scenario()) == 403


async def open_from(port: int, tls, source: str, stack, **kwargs):
    """A socket from a given loopback address; its welcome, or the close code if refused."""
    socket_ = await stack.enter_async_context(
        ws_connect(url(port), tls, local_addr=(source, 0), **kwargs)
    )
    try:
        return (await receive_json(socket_))["type"]
    except ConnectionClosed:
        return await close_code(socket_)


def test_the_per_address_cap_counts_the_real_client_not_nginx(behind_nginx, client_tls):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            # A client cannot pick its address with a header of its own (a new one for each
            # socket, to escape the cap): nginx appends the address it sees, and only that
            # entry is believed.
            first = [
                await open_from(
                    behind_nginx, client_tls, "127.0.0.2", stack,
                    additional_headers={"X-Forwarded-For": f"203.0.113.{n}"},
                )
                for n in range(CAP + 1)
            ]  # fmt: skip
            other = await open_from(behind_nginx, client_tls, "127.0.0.3", stack)
            return first, other

    first, other = asyncio.run(scenario())
    assert first == ["welcome"] * CAP + [1013]  # the third from 127.0.0.2: over its cap
    assert other == "welcome"  # another address has its own count, through the same nginx


def directive_seconds(name: str) -> int:
    [value] = re.findall(rf"^\s*{name}\s+(\d+)s;", SITE.read_text(), flags=re.M)
    return int(value)


def test_the_proxy_timeouts_outlast_the_idle_timeout_whose_close_reaches_the_client(
    behind_nginx, client_tls
):
    """The server closes a silent socket (4000), not nginx: its proxy timeouts are longer
    than the idle timeout's default, and the close frame passes through it."""
    from realtime.conf import DEFAULTS

    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        assert directive_seconds(name) > DEFAULTS["REALTIME_WS_IDLE_TIMEOUT"], name

    async def scenario():
        async with ws_connect(url(behind_nginx), client_tls, ping_interval=None) as socket_:
            await receive_json(socket_)
            started = time.monotonic()
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(socket_.recv(), IDLE + 10)
            return await close_code(socket_), time.monotonic() - started

    code, silent_for = asyncio.run(scenario())
    assert code == 4000
    assert silent_for >= IDLE - 0.5


def test_nginx_drops_request_headers_trickled_past_its_client_header_timeout(
    behind_nginx, client_tls
):
    """client_header_timeout in the shipped site: a slowloris on nginx is cut, not kept."""
    limit = directive_seconds("client_header_timeout")
    with (
        socket.create_connection(("127.0.0.1", behind_nginx), timeout=10) as raw,
        client_tls.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        connection.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        started = time.monotonic()
        connection.settimeout(0.5)
        while time.monotonic() - started < limit + 10:
            try:
                if connection.recv(1024) == b"":
                    break
            except TimeoutError:
                connection.sendall(b"a")
            except (ConnectionError, ssl.SSLError):
                break
        else:
            raise AssertionError("nginx kept the trickled request")
    assert limit - 1 <= time.monotonic() - started < limit + 10


def test_serve_plain_refuses_without_trusted_proxy_headers(server_env):
    result = subprocess.run(
        [PYTHON, "manage.py", "serve", "--plain", "--port", str(free_port())],
        cwd=ROOT,
        env=server_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--plain needs DJANGO_TRUST_PROXY_HEADERS=1" in result.stderr


def through_nginx(port: int, tls, source: str, forwarded_for: str | None = None) -> BrowserSession:
    """A browser at `source`, sending an X-Forwarded-For of its own when given."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return BrowserSession(f"https://localhost:{port}", tls, source=source, headers=headers)


def test_a_new_x_forwarded_for_per_attempt_does_not_escape_the_signin_throttle(
    behind_nginx, client_tls
):
    attempts = [
        through_nginx(behind_nginx, client_tls, "127.0.0.4", f"203.0.113.{n}").try_login(
            f"nobody-{n}", "wrong"
        )
        for n in range(SIGNIN_LIMIT + 1)
    ]
    assert attempts == [200] * SIGNIN_LIMIT + [429]


def test_a_victims_address_in_x_forwarded_for_locks_out_only_the_attacker(
    behind_nginx, client_tls, server_env
):
    password = create_user(server_env, "victim", staff=False)
    attacker = through_nginx(behind_nginx, client_tls, "127.0.0.5", forwarded_for="127.0.0.6")
    attempts = [attacker.try_login(f"guess-{n}", "wrong") for n in range(SIGNIN_LIMIT + 1)]
    assert attempts[-1] == 429
    victim = through_nginx(behind_nginx, client_tls, "127.0.0.6")
    assert victim.try_login("victim", password) == 302


def post_with_token(port: int, tls, source: str, forwarded_for: str) -> int:
    request = urllib.request.Request(
        f"https://localhost:{port}/api/publish",
        data=b'{"message": "x"}',
        headers={"Authorization": "Bearer rtk_wrong", "Content-Type": "application/json",
                 "X-Forwarded-For": forwarded_for},
    )  # fmt: skip
    return status_from(source, request, tls)


def test_a_new_x_forwarded_for_per_request_does_not_escape_the_api_failure_limit(
    behind_nginx, client_tls
):
    statuses = [
        post_with_token(behind_nginx, client_tls, "127.0.0.7", f"198.51.100.{n}")
        for n in range(SIGNIN_LIMIT + 1)
    ]
    assert statuses == [401] * SIGNIN_LIMIT + [429]


def test_metrics_are_not_opened_by_a_forged_x_forwarded_for(behind_nginx, client_tls):
    """Allowed: 127.0.0.1 only (nginx's own address, which a client writes here in vain)."""
    session = through_nginx(behind_nginx, client_tls, "127.0.0.8", forwarded_for="127.0.0.1")
    with pytest.raises(urllib.error.HTTPError) as refused:
        session.request("/metrics")
    refused.value.close()
    assert refused.value.code == 403
