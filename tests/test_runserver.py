"""End to end: `manage.py runserver --tls` (HTTPS and WSS, autoreload) and plain runserver."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request

import pytest

from tests.helpers import PYTHON, free_port, receive_json, ws_connect


def welcome_from(url: str, tls: ssl.SSLContext | None = None, **kwargs) -> dict:
    async def scenario():
        async with ws_connect(url, tls, **kwargs) as socket_:
            welcome = await receive_json(socket_)
            await socket_.send(json.dumps({"type": "ping"}))
            assert await receive_json(socket_) == {"type": "pong"}
            return welcome

    return asyncio.run(scenario())


@pytest.fixture(scope="module")
def runserver_tls(start, tmp_path_factory):
    """runserver --tls with an empty certificate directory: it must create the dev certificate."""
    cert_dir = tmp_path_factory.mktemp("runserver-certs")
    port = free_port()
    server = start(
        [PYTHON, "manage.py", "runserver", "--tls", f"127.0.0.1:{port}"],
        port,
        REALTIME_CERT_DIR=str(cert_dir),
    )
    return server, cert_dir


def test_runserver_tls_creates_the_dev_certificate_and_serves_wss(runserver_tls):
    server, cert_dir = runserver_tls
    assert (cert_dir / "localhost.pem").is_file()
    assert (cert_dir / "localhost-key.pem").stat().st_mode & 0o777 == 0o600
    tls = ssl.create_default_context(cafile=str(cert_dir / "dev-ca.pem"))
    welcome = welcome_from(f"wss://localhost:{server.port}/ws/", tls)
    assert welcome["secure"] is True
    assert welcome["scheme"] == "wss"
    assert f"https://127.0.0.1:{server.port}/" in server.log()


def test_runserver_tls_serves_the_page_over_https(runserver_tls):
    server, cert_dir = runserver_tls
    tls = ssl.create_default_context(cafile=str(cert_dir / "dev-ca.pem"))
    url = f"https://localhost:{server.port}/"
    with urllib.request.urlopen(url, context=tls, timeout=10) as response:
        assert response.status == 200
        assert 'id="connection"' in response.read().decode()


@pytest.fixture(scope="module")
def runserver_plain(start):
    port = free_port()
    return start([PYTHON, "manage.py", "runserver", f"127.0.0.1:{port}"], port, DJANGO_DEBUG="1")


def test_plain_runserver_serves_ws_and_says_not_secure(runserver_plain):
    welcome = welcome_from(f"ws://localhost:{runserver_plain.port}/ws/")
    assert welcome["secure"] is False
    assert welcome["scheme"] == "ws"
    assert welcome["tls"] is None


def test_plain_runserver_serves_the_page_over_http(runserver_plain):
    with urllib.request.urlopen(
        f"http://localhost:{runserver_plain.port}/", timeout=10
    ) as response:
        assert response.status == 200
        assert 'data-ws-path="/ws/"' in response.read().decode()


def test_x_forwarded_proto_is_ignored_unless_proxy_headers_are_trusted(runserver_plain):
    welcome = welcome_from(
        f"ws://localhost:{runserver_plain.port}/ws/",
        additional_headers={"X-Forwarded-Proto": "https"},
    )
    assert welcome["secure"] is False


def test_x_forwarded_proto_counts_when_proxy_headers_are_trusted(start):
    port = free_port()
    server = start(
        [PYTHON, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        port,
        DJANGO_DEBUG="1",
        DJANGO_TRUST_PROXY_HEADERS="1",
    )
    url = f"ws://localhost:{server.port}/ws/"
    proxied = welcome_from(url, additional_headers={"X-Forwarded-Proto": "https"})
    direct = welcome_from(url)
    assert proxied["secure"] is True
    assert direct["secure"] is False
