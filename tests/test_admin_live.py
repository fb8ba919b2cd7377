"""The admin's live view in Chromium, on `serve --workers 2` with Redis: it shows both
workers, and, without a reload, follows sockets opening and closing, a broadcast with the
sockets it reached and its latency, and a refused handshake."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import threading

import pytest
from websockets.asyncio.client import connect

from tests.browsing import HOST, expect, screenshot
from tests.helpers import PYTHON, create_user, free_port, receive_json, run_in_shell
from tests.test_page_ui import axe_violations

INTERVAL = "1"  # REALTIME_LIVE_STATS_INTERVAL, seconds


@pytest.fixture(scope="module")
def stats_server(start, app_test_certs, private_redis):
    redis = private_redis()
    port = free_port()
    certs = app_test_certs
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port),
         "--cert", str(certs.cert), "--key", str(certs.key)],
        port,
        DJANGO_ALLOWED_HOSTS=f"{HOST},localhost",
        REDIS_URL=redis.url,
        REALTIME_LIVE_STATS_INTERVAL=INTERVAL,
    )  # fmt: skip
    return server, redis


class SocketsBeside:
    """WSS clients on an event loop of their own thread: Playwright's sync API keeps the test's
    thread (it refuses to run inside an event loop)."""

    def __init__(self, port: int, tls: ssl.SSLContext) -> None:
        self.port, self.tls = port, tls
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stack = contextlib.AsyncExitStack()

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def open(self, count: int, origin: str) -> None:
        self.run(self._open(count, origin))

    async def _open(self, count: int, origin: str) -> None:
        for _ in range(count):
            socket_ = await self.stack.enter_async_context(
                connect(f"wss://{HOST}:{self.port}/ws/", ssl=self.tls, origin=origin,
                        open_timeout=10, server_hostname=HOST, host="127.0.0.1")
            )  # fmt: skip
            await receive_json(socket_)

    def close(self) -> None:
        self.run(self.stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


LATENCY = re.compile(r"^\d+(\.\d)? ms$")


def test_the_live_view_follows_sockets_broadcasts_and_refusals_without_a_reload(
    stats_server, app_test_certs, page, server_env
):
    server, redis = stats_server
    base = f"https://{HOST}:{server.port}"
    password = create_user(server_env, "vera", staff=True)  # superuser: may view broadcasts
    tls = ssl.create_default_context(cafile=str(app_test_certs.ca_cert))
    page.goto(f"{base}/admin/realtime/broadcast/live/")
    page.fill("#id_username", "vera")
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "open", timeout=15_000)
    page.evaluate("() => { window.notReloaded = true; }")
    workers = page.locator("#live-workers tbody tr")
    expect(workers).to_have_count(2, timeout=10_000)
    expect(workers.nth(0)).to_contain_text("-w1")
    expect(workers.nth(1)).to_contain_text("-w2")
    host_total = page.locator("#live-hosts tbody td.number")
    expect(host_total).to_have_text("1", timeout=10_000)  # the page's own socket

    sockets = SocketsBeside(server.port, tls)
    try:
        sockets.open(6, base)
        expect(host_total).to_have_text("7", timeout=10_000)
        env = {**server_env, "REDIS_URL": redis.url}
        run_in_shell(env, "from realtime import broadcast\nbroadcast.send('Seen by seven')\n")
        row = page.locator("#live-messages tbody tr", has_text="Seen by seven")
        expect(row.locator("td").nth(4)).to_have_text("7", timeout=10_000)
        expect(row.locator("td").nth(5)).to_have_text(LATENCY)
        with contextlib.suppress(Exception):
            sockets.open(1, "https://elsewhere.example")
        refused = page.locator("#live-refused tbody tr", has_text="origin")
        expect(refused.locator("td").nth(1)).to_have_text("1", timeout=10_000)
        screenshot(page, "admin-live-view")
    finally:
        sockets.close()
    expect(host_total).to_have_text("1", timeout=10_000)
    assert page.evaluate("() => window.notReloaded === true")
    assert axe_violations(page) == []
