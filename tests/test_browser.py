"""A real browser: headless Chromium (Debian's package) driven by Playwright, on pages served
under app.test over TLS (tests/browsing.py): the socket's scheme, the CSP, broadcasts from the
admin, reconnects after a worker dies and while Redis is down, and realtime.mjs on its own.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.browsing import HOST, Page, expect, open_page, screenshot
from tests.helpers import PYTHON, create_user, free_port, run_in_shell, slot


@pytest.fixture(scope="module")
def http_server(start):
    port = free_port()
    return start(
        [PYTHON, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        port,
        DJANGO_DEBUG="1",
        DJANGO_ALLOWED_HOSTS=f"{HOST},localhost",
    )


def test_an_https_page_connects_with_wss(page, https_server):
    open_page(page, f"https://{HOST}:{https_server.port}/", "wss")
    expect(page.locator("#connection")).to_have_text("Connected securely")
    expect(page.locator("#page-scheme")).to_have_text("https")
    expect(page.locator('#details dd[data-key="tls-version"]')).to_have_text("TLSv1.3")
    assert page.evaluate("window.realtime.state().welcome.secure") is True


def test_chromium_gets_the_post_quantum_key_exchange(page, https_server):
    """X25519MLKEM768 first (realtime/tls/profiles.py), read from Chromium's own DevTools."""
    devtools = page.context.new_cdp_session(page)
    devtools.send("Network.enable")
    seen: list[dict] = []
    devtools.on("Network.responseReceived", lambda event: seen.append(event["response"]))
    page.goto(f"https://{HOST}:{https_server.port}/")
    [document] = [
        response for response in seen if response["url"].endswith(f":{https_server.port}/")
    ]
    assert document["securityDetails"]["protocol"] == "TLS 1.3"
    assert document["securityDetails"]["keyExchangeGroup"] == "X25519MLKEM768"


def test_an_http_page_connects_with_ws(page, http_server):
    open_page(page, f"http://{HOST}:{http_server.port}/", "ws")
    expect(page.locator("#connection")).to_have_text("Connected (not encrypted)")
    expect(page.locator("#page-scheme")).to_have_text("http (not encrypted)")
    expect(page.locator('#details dd[data-key="tls-version"]')).to_have_text("none (not encrypted)")
    assert page.evaluate("window.realtime.state().welcome.secure") is False


def test_an_https_page_may_not_open_ws_but_may_open_wss(page, https_server):
    port = https_server.port
    open_page(page, f"https://{HOST}:{port}/", "wss")
    # Blocked twice over: mixed content, and the CSP's connect-src 'self' (which on an https
    # page matches wss: only). Chromium throws for the one, fails the socket for the other.
    insecure = page.evaluate(
        """url => new Promise(resolve => {
                let socket;
                try { socket = new WebSocket(url); }
                catch (e) { resolve(e.name + ": " + e.message); return; }
                socket.onopen = () => resolve("opened");
                socket.onerror = () => resolve("blocked");
           })""",
        f"ws://{HOST}:{port}/ws/",
    )
    assert insecure == "blocked" or insecure.startswith("SecurityError"), insecure
    secure = page.evaluate(
        """url => new Promise(resolve => {
                const socket = new WebSocket(url);
                socket.onmessage = event => { resolve(JSON.parse(event.data)); socket.close(); };
                socket.onerror = () => resolve("error");
           })""",
        f"wss://{HOST}:{port}/ws/",
    )
    assert secure["type"] == "welcome"
    assert secure["secure"] is True


def admin_broadcast(page: Page, base: str, message: str, audience: str) -> None:
    page.goto(f"{base}/admin/realtime/broadcast/add/")
    page.fill("#id_message", message)
    page.select_option("#id_level", "warning")
    page.select_option("#id_audience", audience)
    # admin_broadcast.js keeps the count and the preview as the sender types and picks.
    count = f"{len(message)} / 2000 characters"
    expect(page.locator("#broadcast-message-count")).to_have_text(count)
    expect(page.locator("#broadcast-preview .broadcast-preview-label")).to_have_text("Warning")
    expect(page.locator("#broadcast-preview .broadcast-preview-message")).to_have_text(message)
    page.click("input[name=_save]")
    if audience == "everyone":  # asked first, with the number of clients it reaches now
        expect(page.locator("#broadcast-reach")).to_contain_text("every connected client")
        page.click("input[value='Yes, send to everyone']")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")


def test_an_admin_broadcast_appears_live_and_staff_only_ones_do_not(
    browser, page, https_server, server_env
):
    password = create_user(server_env, "alice", staff=True)
    base = f"https://{HOST}:{https_server.port}"
    open_page(page, base + "/", "wss")

    staff_context = browser.new_context()
    admin = staff_context.new_page()
    admin.goto(f"{base}/admin/login/?next=/admin/")
    admin.fill("#id_username", "alice")
    admin.fill("#id_password", password)
    admin.click("input[type=submit]")
    expect(admin.locator("#user-tools")).to_contain_text("alice")

    admin_broadcast(admin, base, "Staff eyes only", "staff")
    admin_broadcast(admin, base, "Hello, everyone", "everyone")
    staff_context.close()

    newest = page.locator("#broadcasts li").first
    expect(newest).to_contain_text("Hello, everyone", timeout=10_000)
    expect(newest).to_have_attribute("data-level", "warning")
    expect(page.locator("#broadcasts")).not_to_contain_text("Staff eyes only")
    assert page.locator("#broadcasts li", has_text="Hello, everyone").count() == 1


def test_no_page_breaks_the_content_security_policy(browser, https_server, server_env):
    """Every page, the admin's included, under the strict CSP (realtime/web/headers.py): Chromium
    reports no violation, the page's script runs (its socket opens) and the headers are sent."""
    password = create_user(server_env, "csp-staff", staff=True)
    base = f"https://{HOST}:{https_server.port}"
    context = browser.new_context()
    page = context.new_page()
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "console.error('Content Security Policy violation: ' + e.violatedDirective + ' ' + "
        "e.blockedURI))"
    )
    response = page.goto(f"{base}/accounts/login/")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "camera=()" in response.headers["permissions-policy"]
    page.fill("#id_username", "csp-staff")
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=15_000)
    for path in ("/admin/", "/admin/realtime/broadcast/", "/admin/realtime/broadcast/add/",
                 "/admin/auth/user/", "/admin/password_change/"):  # fmt: skip
        assert page.goto(base + path).status == 200, path
    page.goto(base + "/admin/realtime/broadcast/add/")
    page.fill("#id_message", "Under the policy")
    expect(page.locator("#broadcast-preview")).to_contain_text("Under the policy")  # its script ran
    page.click("input[name=_save]")
    page.click("input[value='Yes, send to everyone']")  # the audience is everyone by default
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    page.goto(base + "/admin/auth/user/")
    page.locator("input.action-select").first.check()
    page.select_option("select[name=action]", "send_notification")
    page.click("button[name=index]")
    page.fill("#id_text", "Under the policy too")
    page.click("input[value='Send notification']")
    expect(page.locator(".messagelist")).to_contain_text("Sent a notification to 1 user(s).")
    context.close()
    assert violations == []


STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")


@pytest.fixture(scope="module")
def served(start, app_test_certs, redis_server):
    """`serve --workers 2` with Redis, under app.test."""
    port = free_port()
    certificate = ["--cert", str(app_test_certs.cert), "--key", str(app_test_certs.key)]
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port), *certificate],
        port,
        DJANGO_ALLOWED_HOSTS=f"{HOST},localhost",
        REDIS_URL=redis_server.url,
        # Each worker checks the layer every second: a lost Redis shows within seconds.
        REALTIME_FANOUT_CHECK="1",
        REALTIME_FANOUT_CHECK_TIMEOUT="1",
    )
    deadline = time.monotonic() + 30
    while len(dict(STARTED.findall(server.log()))) < 2:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.1)
    return server


def send_from_a_shell(env: dict, redis_url: str, messages: list[str]) -> None:
    code = "from realtime import broadcast\n" + "".join(
        f"broadcast.send({m!r})\n" for m in messages
    )
    run_in_shell({**env, "REDIS_URL": redis_url}, code)


def test_the_page_reconnects_after_its_worker_dies_and_shows_what_it_missed_once(
    page, served, server_env, redis_server
):
    open_page(page, f"https://{HOST}:{served.port}/", "wss")
    screenshot(page, "worker-killed-1-open")
    page.evaluate(
        """() => {
            window.statesSeen = [];
            new MutationObserver(() => window.statesSeen.push(
                document.querySelector("#connection").dataset.state
            )).observe(document.querySelector("#connection"), {attributes: true});
        }"""
    )
    worker = slot(page.evaluate("window.realtime.state().welcome.worker"))
    os.kill(int(dict(STARTED.findall(served.log()))[worker]), signal.SIGKILL)
    send_from_a_shell(
        server_env, redis_server.url, [f"missed while {worker} was down {n}" for n in range(3)]
    )
    expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=20_000)
    for n in range(3):
        item = page.locator("#broadcasts li", has_text=f"missed while {worker} was down {n}")
        expect(item).to_have_count(1, timeout=10_000)
    screenshot(page, "worker-killed-2-reconnected")
    seen = page.evaluate("window.statesSeen")
    assert "closed" in seen and seen[-1] == "open", seen
    state = page.evaluate("window.realtime.state()")
    assert state["resumes"] >= 2  # once on the first connection, again after the reconnect
    ids = page.eval_on_selector_all(
        "#broadcasts li", "items => items.map(i => Number(i.dataset.broadcastId))"
    )
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))


def test_the_page_says_live_updates_paused_while_redis_is_down(page, served, redis_server):
    open_page(page, f"https://{HOST}:{served.port}/", "wss")
    connection = page.locator("#connection")
    redis_server.stop()
    try:
        expect(connection).to_have_attribute("data-state", "paused", timeout=15_000)
        expect(connection).to_contain_text("Live updates paused")
        screenshot(page, "redis-down-paused")
    finally:
        redis_server.start()
    expect(connection).to_have_attribute("data-state", "open", timeout=20_000)
    expect(connection).to_have_text("Connected securely")


def send_to_topic(env: dict, redis_url: str, topic: str, texts: list[str]) -> None:
    code = "from realtime import topics\n" + "".join(
        f"topics.send({topic!r}, {text!r})\n" for text in texts
    )
    run_in_shell({**env, "REDIS_URL": redis_url}, code)


def test_the_es_module_resumes_a_topic_across_its_workers_death_with_each_message_once(
    page, served, server_env, redis_server
):
    """realtime.mjs in Chromium, on any page of the site (imported, not the page's client)."""
    open_page(page, f"https://{HOST}:{served.port}/", "wss")
    page.evaluate(
        """async () => {
            const { connect } = await import("/static/realtime/realtime.mjs");
            window.got = [];
            window.states = [];
            window.rt = connect({ path: "/ws/" });
            window.rt.on("state", (s) => window.states.push(s.state));
            window.rt.subscribe("news.browser", (m) => window.got.push([m.offset, m.data]));
        }"""
    )
    page.wait_for_function("() => window.rt.state().topics['news.browser']", timeout=10_000)
    send_to_topic(server_env, redis_server.url, "news.browser", ["live 0", "live 1"])
    page.wait_for_function("() => window.got.length === 2", timeout=10_000)
    worker = slot(page.evaluate("window.rt.state().welcome.worker"))
    os.kill(int(dict(STARTED.findall(served.log()))[worker]), signal.SIGKILL)
    send_to_topic(server_env, redis_server.url, "news.browser", [f"missed {n}" for n in range(3)])
    page.wait_for_function("() => window.got.length >= 5", timeout=20_000)
    time.sleep(1)  # a copy would arrive now
    got = page.evaluate("window.got")
    states = page.evaluate("window.states")
    assert [text for _, text in got] == ["live 0", "live 1", "missed 0", "missed 1", "missed 2"]
    offsets = [offset for offset, _ in got]
    assert offsets == list(range(offsets[0], offsets[0] + 5))
    assert "closed" in states and states[-1] == "open", states


def test_chromium_negotiates_compression_and_both_ways_work(page, served, server_env, redis_server):
    """Chromium offers permessage-deflate; the server accepts it without context takeover
    (realtime/server/compression.py). A 2 KiB broadcast arrives deflated and whole; what the
    page sends (subscribes, which Chromium compresses on its own) is understood."""
    devtools = page.context.new_cdp_session(page)
    devtools.send("Network.enable")
    answers: list[dict] = []
    frames: list[dict] = []
    devtools.on("Network.webSocketHandshakeResponseReceived", lambda e: answers.append(e))
    devtools.on("Network.webSocketFrameReceived", lambda e: frames.append(e["response"]))
    open_page(page, f"https://{HOST}:{served.port}/", "wss")
    answer = next(a for a in answers if a["response"]["status"] == 101)
    headers = {name.lower(): value for name, value in answer["response"]["headers"].items()}
    extension = headers["sec-websocket-extensions"]
    assert extension.startswith("permessage-deflate") and "client_no_context_takeover" in extension
    text = "orders: " + ", ".join(f"#{n} shipped to customer-{n * 37 % 101:03d}" for n in range(60))
    send_from_a_shell(server_env, redis_server.url, [text])
    expect(page.locator("#broadcasts li", has_text=text)).to_have_count(1)
    assert any(text in frame["payloadData"] for frame in frames)
    page.evaluate(
        """async () => {
            const { connect } = await import("/static/realtime/realtime.mjs");
            window.got = [];
            window.rt = connect({ path: "/ws/" });
            for (const topic of ["news.deflate-a", "news.deflate-b"]) {
                window.rt.subscribe(topic, (m) => window.got.push([topic, m.data]));
            }
        }"""
    )
    page.wait_for_function(
        "() => ['news.deflate-a', 'news.deflate-b'].every((t) => window.rt.state().topics[t])",
        timeout=10_000,
    )
    long = "x" * 300 + " end"
    send_to_topic(server_env, redis_server.url, "news.deflate-a", [long])
    send_to_topic(server_env, redis_server.url, "news.deflate-b", ["short"])
    page.wait_for_function("() => window.got.length === 2", timeout=10_000)
    assert sorted(page.evaluate("window.got")) == [
        ["news.deflate-a", long],
        ["news.deflate-b", "short"],
    ]
