"""The example chat in Chromium (tests/browsing.py), on `serve --workers 2` with Redis: two users
in two browser contexts, the room's history on open, who is here and who is typing, refusals in
words; one of them loses its worker (SIGKILL) mid-conversation, sends while it is gone, and
both pages end up with every message once, in order. axe-core finds no WCAG A or AA violation
on the room page, and a 390 px phone can read and send without scrolling sideways.
The pages themselves: tests/test_chat_views.py."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.browsing import HOST, Page, expect, screenshot
from tests.helpers import PYTHON, create_users, demote, free_port, slot, wait_until
from tests.test_page_ui import PHONE, axe_violations

STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")
PRESENCE_TTL = 3  # REALTIME_PRESENCE_TTL: a killed worker's users are gone within it
ROOM = "team-room"
BOTH = [re.compile(r"^alice( \(you\))?$"), re.compile(r"^bob( \(you\))?$")]


@pytest.fixture(scope="module")
def served(start, app_test_certs, redis_server):
    port = free_port()
    certificate = ["--cert", str(app_test_certs.cert), "--key", str(app_test_certs.key)]
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port), *certificate],
        port,
        DJANGO_ALLOWED_HOSTS=f"{HOST},localhost",
        REDIS_URL=redis_server.url,
        REALTIME_PRESENCE_TTL=str(PRESENCE_TTL),
    )
    wait_until(lambda: len(set(dict(STARTED.findall(server.log())))) >= 2, "both workers")
    return server


@pytest.fixture(scope="module")
def users(server_env):
    return create_users(server_env, {"alice": False, "bob": False, "carol": False, "dave": True})


@pytest.fixture(scope="module")
def base(served) -> str:
    return f"https://{HOST}:{served.port}"


def signed_in(browser, base: str, username: str, users: dict, **context_options) -> Page:
    """A browser context of its own (its own cookies), signed in as `username`."""
    page = browser.new_context(**context_options).new_page()
    page.add_init_script(
        "window.cspViolations = []; document.addEventListener('securitypolicyviolation',"
        " e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI))"
    )
    page.goto(f"{base}/accounts/login/?next=/chat/")
    page.fill("#id_username", username)
    page.fill("#id_password", users[username])
    page.press("#id_password", "Enter")
    expect(page.locator("h1")).to_have_text("Chat")
    return page


def connected(page: Page) -> None:
    expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=20_000)
    expect(page.locator("#connection")).to_have_text("Connected securely")


def say(page: Page, text: str) -> None:
    """Type into the message field and press Enter, as a person does."""
    page.locator("#message").fill(text)
    page.keyboard.press("Enter")


def log_of(page: Page) -> list[tuple[int, str, str]]:
    """(offset, author, text) of every message the page lists, in the page's order."""
    return page.eval_on_selector_all(
        "#log li",
        "items => items.map(i => [Number(i.dataset.offset),"
        " i.querySelector('.author').textContent, i.querySelector('.msg-text').textContent])",
    )


# Each publish the page sends: [its socket (1 = the page's first), client id, text].
RECORD_PUBLISHES = """(() => {
    const send = WebSocket.prototype.send;
    const numbers = new WeakMap();
    let count = 0;
    window.sentPublishes = [];
    WebSocket.prototype.send = function (data) {
        if (!numbers.has(this)) numbers.set(this, ++count);
        const message = JSON.parse(data);
        if (message.type === "publish") {
            window.sentPublishes.push([numbers.get(this), message.id, message.data.text]);
        }
        return send.call(this, data);
    };
})()"""


def worker_of(page: Page) -> str:
    return slot(page.evaluate("window.chat.state().welcome.worker"))


def test_two_users_chat_through_a_killed_worker_and_see_every_message_once_in_order(
    browser, base, served, users
):
    started = time.monotonic()
    alice = signed_in(browser, base, "alice", users)
    assert axe_violations(alice) == []  # the rooms page
    screenshot(alice, "chat-rooms")
    # Keyboard only: the room's name typed into the rooms page, Enter opens it.
    alice.locator("#room").fill("Team Room")
    alice.keyboard.press("Enter")
    expect(alice).to_have_url(f"{base}/chat/{ROOM}/")
    connected(alice)
    assert alice.evaluate("document.activeElement.id") == "message"  # ready to type
    say(alice, "1 hello from alice")
    say(alice, "2 anyone here?")
    expect(alice.locator("#log li")).to_have_count(2)

    # Bob opens the room afterwards: the history is on the page, nothing comes twice.
    bob = signed_in(browser, base, "bob", users)
    bob.add_init_script("Math.random = () => 0.999")  # reconnects wait ~0.5 s, then 1 s...
    bob.add_init_script(RECORD_PUBLISHES)
    bob.goto(f"{base}/chat/{ROOM}/")
    connected(bob)
    for _ in range(20):  # on the other worker than alice's, so that alice stays connected
        if worker_of(bob) != worker_of(alice):
            break
        bob.reload()
        connected(bob)
    assert worker_of(bob) != worker_of(alice)
    assert [text for _, _, text in log_of(bob)] == ["1 hello from alice", "2 anyone here?"]

    for page in (alice, bob):  # who is here, on both pages
        expect(page.locator("#people li")).to_have_text(BOTH, timeout=10_000)
        expect(page.locator("#people-summary")).to_have_text("2 people here.")
    expect(bob.locator("#people li", has_text="bob")).to_contain_text("(you)")

    # Alice types: bob sees it, and no longer once her message is there.
    alice.locator("#message").press_sequentially("3 typing", delay=20)
    expect(bob.locator("#typing")).to_have_text("alice is typing…", timeout=5_000)
    expect(alice.locator("#typing")).to_have_text("")  # not told about herself
    alice.keyboard.press("Enter")
    expect(bob.locator("#log li").last).to_contain_text("3 typing")
    expect(bob.locator("#typing")).to_have_text("")

    # Refused, in words; the text is given back to correct.
    say(bob, "   ")
    expect(bob.locator("#send-error")).to_have_text("Not sent: A message needs some text.")
    expect(bob.locator("#message")).to_have_value("   ")
    assert bob.evaluate("document.activeElement.id") == "message"
    say(bob, "4 hi alice")
    expect(bob.locator("#send-error")).to_have_text("")
    expect(alice.locator("#log li").last).to_contain_text("4 hi alice")

    violations = axe_violations(bob)
    screenshot(bob, "chat-room")

    # Bob's worker dies as he sends; he writes again while he is away; alice talks on.
    pid = int(dict(STARTED.findall(served.log()))[worker_of(bob)])
    say(bob, "5 sent as the worker died")
    os.kill(pid, signal.SIGKILL)
    expect(bob.locator("#connection")).not_to_have_attribute("data-state", "open")
    say(bob, "6 sent while away")
    say(alice, "7 alice while bob was away")
    connected(bob)
    expect(bob.locator("#outbox li")).to_have_count(0, timeout=10_000)
    say(bob, "8 bob is back")
    say(alice, "9 welcome back")
    expected = {f"{n} " for n in range(1, 10)}
    for page in (alice, bob):
        wait_until(lambda p=page: len(log_of(p)) >= 9, "nine messages", timeout=10)
    time.sleep(0.5)  # a copy would arrive now
    alice_log, bob_log = log_of(alice), log_of(bob)
    assert alice_log == bob_log, (alice_log, bob_log)
    offsets = [offset for offset, _, _ in bob_log]
    assert offsets == list(range(1, 10)), bob_log  # each once, in order, none missing
    assert {text[:2] for _, _, text in bob_log} == expected
    by = {name: [t for _, a, t in bob_log if a == name] for name in ("alice", "bob")}
    assert [t[0] for t in by["alice"]] == ["1", "2", "3", "7", "9"]  # as each of them sent
    assert [t[0] for t in by["bob"]] == ["4", "5", "6", "8"]
    assert bob.evaluate("window.chat.state().offsets") == offsets
    # What bob's page sent: "6" once, on the new socket; "5" on the old one and, when its
    # `published` did not come back before the kill, again on the new one with the same id.
    sent = bob.evaluate("window.sentPublishes")
    sockets = {text[0]: [n for n, _, t in sent if t == text] for _, _, text in sent}
    ids = {text[0]: {i for _, i, t in sent if t == text} for _, _, text in sent}
    assert len(sockets["6"]) == 1 and sockets["6"][0] > sockets["4"][-1], sent
    assert sockets["5"][0] == sockets["4"][-1] and len(sockets["5"]) in (1, 2), sent
    assert len(ids["5"]) == 1, sent  # sent again, the same id: stored once
    for page, me in ((alice, "alice"), (bob, "bob")):  # one's own messages stand out
        mine = page.eval_on_selector_all(
            "#log li", "items => items.map(i => i.classList.contains('mine'))"
        )
        assert mine == [author == me for _, author, _ in bob_log]

    for page in (alice, bob):  # both still here
        expect(page.locator("#people li")).to_have_text(BOTH, timeout=10_000)
    screenshot(bob, "chat-room-after-the-kill")
    assert violations == []
    assert axe_violations(bob) == []
    for page in (alice, bob):  # under the strict CSP: nothing inline, nothing refused
        assert page.evaluate("window.cspViolations") == []
    alice.context.close()
    bob.context.close()
    assert time.monotonic() - started < 40


def test_a_390_px_phone_reads_and_sends_without_scrolling_sideways(browser, base, users):
    phone = signed_in(
        browser, base, "carol", users, viewport=PHONE, device_scale_factor=2, is_mobile=True
    )
    phone.goto(f"{base}/chat/phones/")
    connected(phone)
    long_word = "x" * 120  # one token wider than the screen: wrapped, not scrolled
    for text in ("hello from a phone", long_word):
        say(phone, text)
    expect(phone.locator("#log li")).to_have_count(2)
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for selector in ("#log", "#message", "#send button", "#people"):
        box = phone.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], selector
    field, button = (phone.locator(s).bounding_box() for s in ("#message", "#send button"))
    assert field["width"] >= 200 and button["height"] >= 24
    assert field["y"] + field["height"] <= PHONE["height"]  # the field on the first screen
    screenshot(phone, "chat-phone")
    phone.context.close()


def test_a_staff_member_demoted_in_the_staff_room_is_told_the_room_is_closed_to_them(
    browser, base, users, server_env, redis_server
):
    page = signed_in(browser, base, "dave", users)
    page.goto(f"{base}/chat/staff/")
    connected(page)
    say(page, "staff only")
    expect(page.locator("#log li")).to_have_count(1)
    demote(server_env, redis_server.url, "dave")
    expect(page.locator("#ended")).to_be_visible(timeout=10_000)
    expect(page.locator("#ended")).to_contain_text("You can no longer read this room.")
    expect(page.locator("#message")).to_be_disabled()
    page.goto(f"{base}/chat/staff/")
    expect(page.locator("h1")).to_have_text("#staff is for staff only")
    page.context.close()
