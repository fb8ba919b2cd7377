"""The page, sign-in and admin as people use them, in Chromium (tests/browsing.py): the page says
what it is and what state the connection is in, broadcasts and notifications arrive and are
announced once, staff see who is online, times read one way, everything works from the
keyboard, axe-core finds no WCAG A or AA violation, and a 390 px phone shows what matters first.
Screenshots of each page go to test-artifacts/.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.browsing import ARTIFACTS, HOST, Page, expect, open_page, screenshot
from tests.helpers import ROOT, create_user, daphne_tls_args, free_port, run_in_shell

AXE = ROOT / "tests" / "js" / "node_modules" / "axe-core" / "axe.min.js"
WCAG_A_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def base(https_server) -> str:
    return f"https://{HOST}:{https_server.port}"


def shell(server_env: dict, redis_server, code: str) -> None:
    run_in_shell({**server_env, "REDIS_URL": redis_server.url}, code)


def broadcast(server_env, redis_server, message: str, level: str = "info") -> None:
    shell(
        server_env,
        redis_server,
        f"from realtime import broadcast\nbroadcast.send({message!r}, level={level!r})\n",
    )


def notify(server_env, redis_server, username: str, text: str, level: str = "info") -> None:
    shell(
        server_env,
        redis_server,
        "from django.contrib.auth import get_user_model\n"
        "from realtime import notifications\n"
        f"user = get_user_model().objects.get(username={username!r})\n"
        f"notifications.notify(user, {text!r}, level={level!r})\n",
    )


def sign_in(page: Page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    expect(page.locator(".signed-in-as")).to_contain_text(username)


def axe_violations(page: Page) -> list[dict]:
    """axe-core run in the page, WCAG 2.x A and AA rules: its violations, [] when none.
    page.evaluate runs through DevTools, which the page's CSP does not govern."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make test` installs it (npm ci in tests/js)")
    page.evaluate(AXE.read_text())
    result = page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", WCAG_A_AA
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
    ]


def live_regions(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "[aria-live], [role=status], [role=log], [role=alert]",
        "els => els.map(e => e.id || e.tagName)",
    )


# --- 1. The page explains itself ---------------------------------------------------------


def test_the_page_says_what_it_is_and_hides_the_technical_details(page, base):
    open_page(page, base + "/", "wss")
    expect(page.locator("h1")).to_have_text("Updates")
    expect(page.locator(".intro")).to_contain_text("New ones appear the moment they are sent")
    expect(page.locator("#connection")).to_have_text("Connected securely")
    details, log = page.locator("#details"), page.locator("#log")
    assert details.get_attribute("open") is None and log.get_attribute("open") is None
    expect(page.locator('#details dd[data-key="tls-cipher"]')).not_to_be_visible()
    page.click("#details summary")
    expect(page.locator('#details dd[data-key="tls-version"]')).to_have_text("TLSv1.3")
    expect(page.locator('#details dd[data-key="worker"]')).not_to_have_text("—")
    # Only the announcer speaks: not the log, not the lists, not the connection badge.
    assert live_regions(page) == ["announcer"]
    screenshot(page, "page-home")


def test_when_the_socket_is_not_open_nothing_claims_secure_or_live(
    browser, start, app_test_certs, redis_server
):
    port = free_port()
    server = start(
        daphne_tls_args(port, app_test_certs),
        port,
        DJANGO_ALLOWED_HOSTS=f"{HOST},localhost",
        REDIS_URL=redis_server.url,
    )
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script("Math.random = () => 0.999")
    open_page(page, f"https://{HOST}:{port}/", "wss")
    page.click("#details summary")
    server.stop()
    connection = page.locator("#connection")
    expect(connection).to_have_attribute("data-state", "closed", timeout=10_000)
    # Each failed attempt doubles the wait (Math.random is 0.999 here): 0.5, 1, 2, 4 s...
    expect(connection).to_have_text(re.compile(r"^Reconnecting in [3-9] s$"), timeout=15_000)
    seconds = int(connection.inner_text().split()[2])
    expect(connection).to_have_text(f"Reconnecting in {seconds - 1} s", timeout=1_500)
    text = page.locator("main").inner_text()
    claims = re.findall(r"(?i)connected securely|connected \(|\bsecure\b|\blive\b", text)
    assert claims == [], text
    for key in ("tls-version", "tls-cipher", "worker"):
        expect(page.locator(f'#details dd[data-key="{key}"]')).to_have_text("—")
    expect(page.locator('#details dd[data-key="close"]')).to_contain_text("1006")
    screenshot(page, "page-disconnected")
    context.close()


# --- Broadcasts: level in words, long ones clamped, one time format ----------------------------


def test_broadcasts_show_their_level_in_words_clamp_long_text_and_read_times_one_way(
    page, base, server_env, redis_server
):
    broadcast(server_env, redis_server, "Rendered on load", "success")
    open_page(page, base + "/", "wss")
    long_text = " ".join(["A long announcement that goes on."] * 45)  # about 1,500 characters
    broadcast(server_env, redis_server, long_text, "warning")
    newest = page.locator("#broadcasts li").first
    expect(newest).to_have_attribute("data-level", "warning", timeout=10_000)
    expect(newest.locator(".level-label")).to_have_text("Warning")
    assert newest.locator(".level-icon").get_attribute("aria-hidden") == "true"
    expect(page.locator("#announcer")).to_have_text(f"Warning broadcast: {long_text}")

    text, more = newest.locator(".card-text"), newest.locator(".show-more")
    clamped_height = text.bounding_box()["height"]
    assert clamped_height < 150, clamped_height
    expect(more).to_have_attribute("aria-expanded", "false")
    more.click()
    expect(more).to_have_text("Show less")
    expect(more).to_have_attribute("aria-expanded", "true")
    assert text.bounding_box()["height"] > 3 * clamped_height
    short = page.locator("#broadcasts li", has_text="Rendered on load")
    expect(short.locator(".level-label")).to_have_text("Success")
    expect(short.locator(".show-more")).to_have_count(0)

    # Server-rendered and live times read the same: relative, the exact time on hover.
    for item in (newest, short):
        when = item.locator("time")
        expect(when).to_have_text("now")
        assert str(time.gmtime().tm_year) in when.get_attribute("title")
    screenshot(page, "page-broadcasts")


def test_broadcasts_arriving_together_are_announced_in_one_sentence(
    page, base, server_env, redis_server
):
    open_page(page, base + "/", "wss")
    texts = ["Together one", "Together two", "Together three"]
    sends = "".join(f"    broadcast.send({text!r})\n" for text in texts)
    shell(
        server_env,
        redis_server,
        f"from django.db import transaction\nfrom realtime import broadcast\n"
        f"with transaction.atomic():\n{sends}",
    )
    expect(page.locator("#announcer")).to_have_text(
        "3 new updates. Latest: Info broadcast: Together three", timeout=10_000
    )


def test_a_page_that_cannot_resume_reloads_once_then_says_what_is_missing(page, base):
    """A broadcast position the server cannot resume (another epoch) makes the page reload;
    the reloaded page gets the same answer and, within the minute, says so instead."""

    # Before page.mjs runs (module scripts run after the document is parsed).
    page.add_init_script(
        "document.addEventListener('readystatechange', () => {"
        " if (document.readyState === 'interactive')"
        " document.body.setAttribute('data-broadcasts-epoch', 'gone'); })"
    )
    loads = []
    page.on("load", lambda _: loads.append(time.monotonic()))
    page.goto(base + "/")
    expect(page.locator("#missed")).to_be_visible(timeout=15_000)
    expect(page.locator("#missed")).to_contain_text("Reload the page")
    time.sleep(1)
    assert len(loads) == 2, loads  # the first load and one reload, no loop


def test_relative_times_move_on_while_the_page_stays_open(page, base, server_env, redis_server):
    """The page refreshes relative times every 30 s (page.mjs RELATIVE_REFRESH_MS): the
    browser's clock is run past it, and past several."""
    broadcast(server_env, redis_server, "Timed")
    page.clock.install()
    open_page(page, base + "/", "wss")
    when = page.locator("#broadcasts li", has_text="Timed").first.locator("time")
    expect(when).to_have_text("now")
    page.clock.fast_forward("05:00")
    expect(when).to_have_text("5 minutes ago")
    page.clock.fast_forward("02:00:00")
    expect(when).to_have_text("2 hours ago")


# --- 2. Notifications and who is online -------------------------------------------------------


def test_a_notification_reaches_its_user_live_once_and_stays_listed(
    browser, base, server_env, redis_server
):
    password = create_user(server_env, "nora", staff=False)
    create_user(server_env, "other", staff=False)
    context = browser.new_context()
    page = context.new_page()
    notify(server_env, redis_server, "nora", "Sent before the page opened")
    sign_in(page, base, "nora", password)
    expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=15_000)
    items = page.locator("#notifications li")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("Sent before the page opened")

    notify(server_env, redis_server, "nora", "Your export is ready", "success")
    notify(server_env, redis_server, "other", "Not for nora")
    expect(items.first).to_contain_text("Your export is ready", timeout=10_000)
    expect(items.first.locator(".level-label")).to_have_text("Success")
    expect(page.locator("#announcer")).to_have_text("Notification: Your export is ready")
    time.sleep(1)  # a copy, or another user's, would have arrived by now
    expect(items).to_have_count(2)
    expect(page.locator("#notifications")).not_to_contain_text("Not for nora")
    screenshot(page, "page-notifications")

    page.reload()
    expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=15_000)
    time.sleep(1)  # nothing may come again on reconnecting: a copy would have arrived by now
    texts = items.all_inner_texts()
    assert len(texts) == 2 and "Your export is ready" in texts[0], texts
    context.close()


def test_staff_see_who_is_online_and_others_never_hear_it(browser, base, server_env):
    staff_password = create_user(server_env, "sam", staff=True)
    user_password = create_user(server_env, "uma", staff=False)
    staff_context, user_context = browser.new_context(), browser.new_context()
    staff, user = staff_context.new_page(), user_context.new_page()
    sign_in(staff, base, "sam", staff_password)
    sign_in(user, base, "uma", user_password)
    for page in (staff, user):
        expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=15_000)
    online = staff.locator("#online li")
    expect(online).to_have_text(["sam", "uma"], timeout=10_000)
    expect(staff.locator("#online-summary")).to_have_text("2 people are signed in and online now:")
    screenshot(staff, "page-staff-online")

    assert user.locator("#online").count() == 0
    types = user.evaluate(
        "() => [...document.querySelectorAll('#messages li')].map(li => li.dataset.type)"
    )
    assert "presence" not in types and "join" not in types, types
    user_context.close()
    expect(online).to_have_text(["sam"], timeout=20_000)
    expect(staff.locator("#online-summary")).to_have_text("1 person is signed in and online now:")
    staff_context.close()


# --- 3. Sign-in and layout -----------------------------------------------------------------


def test_sign_in_is_styled_shows_one_error_and_links_back(page, base, server_env):
    create_user(server_env, "sid", staff=False)
    page.goto(f"{base}/accounts/login/")
    expect(page.locator("header .site-name")).to_have_text("realtime")
    expect(page.locator("h1")).to_have_text("Sign in")
    assert page.locator("header a", has_text="Sign in").count() == 0
    page.fill("#id_username", "sid")
    page.fill("#id_password", "wrong password")
    page.click("button[type=submit]")
    errors = page.locator(".alert, .errorlist, [role=alert]")
    expect(errors).to_have_count(1)
    expect(errors.first).to_have_text("Your username and password didn't match. Please try again.")
    screenshot(page, "page-sign-in-error")
    page.click("text=Back to live updates")
    expect(page.locator("h1")).to_have_text("Updates")


def test_sign_out_is_a_form_in_the_header(page, base, server_env):
    password = create_user(server_env, "olga", staff=False)
    sign_in(page, base, "olga", password)
    form = page.locator("header form.sign-out")
    assert form.get_attribute("method") == "post"
    assert (
        page.evaluate("() => document.querySelector('header form.sign-out').closest('p')") is None
    )
    form.locator("button").click()
    expect(page.locator("header")).to_contain_text("Sign in")


# --- 5. Accessibility ------------------------------------------------------------------------


def test_axe_finds_no_wcag_a_or_aa_violation(browser, base, server_env, redis_server):
    broadcast(server_env, redis_server, "Checked by axe", "error")
    password = create_user(server_env, "axel", staff=True)
    context = browser.new_context()
    page = context.new_page()
    found = {}
    page.goto(f"{base}/accounts/login/")
    found["sign-in"] = axe_violations(page)
    screenshot(page, "axe-sign-in")
    page.fill("#id_username", "axel")
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=15_000)
    notify(server_env, redis_server, "axel", "Checked by axe too", "warning")
    expect(page.locator("#notifications li")).to_have_count(1, timeout=10_000)
    page.click("#details summary")
    page.click("#log summary")
    found["home, signed in"] = axe_violations(page)
    screenshot(page, "axe-home")
    page.goto(f"{base}/admin/realtime/broadcast/add/")
    found["admin add"] = axe_violations(page)
    screenshot(page, "axe-admin-add")
    context.close()
    anonymous = browser.new_context()
    page = anonymous.new_page()
    open_page(page, base + "/", "wss")
    found["home"] = axe_violations(page)
    anonymous.close()
    assert found == {name: [] for name in found}, json.dumps(found, indent=1)


def test_the_page_works_from_the_keyboard_with_visible_focus(page, base, server_env, redis_server):
    broadcast(server_env, redis_server, " ".join(["Keyboard."] * 150), "info")
    open_page(page, base + "/", "wss")
    page.keyboard.press("Tab")
    focused = page.evaluate("() => document.activeElement.textContent")
    assert focused == "Skip to content"
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.textContent.trim()"))
        assert_focus_visible(page)
        if reached[-1] == "Show more":
            page.keyboard.press("Enter")
            expect(page.locator(".show-more").first).to_have_attribute("aria-expanded", "true")
        if reached[-1] == "Connection details":
            page.keyboard.press("Enter")
            expect(page.locator("#details")).to_have_attribute("open", "")
            break
    assert "Show more" in reached and reached[-1] == "Connection details", reached


def assert_focus_visible(page: Page) -> None:
    style = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, s.outlineWidth]; }"
    )
    assert style[0] != "none" and style[1] != "0px", style


# --- 6. A phone, 390 px wide --------------------------------------------------------------------


def test_a_phone_shows_the_connection_and_newest_broadcast_first_and_breaks_no_word(
    browser, base, server_env, redis_server
):
    broadcast(server_env, redis_server, "Maintenance tonight between 22:00 and 23:00", "warning")
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    open_page(page, base + "/", "wss")
    for selector in ("#connection", "#broadcasts li:first-child"):
        box = page.locator(selector).bounding_box()
        assert box["y"] + box["height"] <= PHONE["height"], (selector, box)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    broken = page.evaluate(
        """() => {
            const broken = [];
            const walker = document.createTreeWalker(document.querySelector("main"),
                NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                if (!node.parentElement.checkVisibility()) continue;  // e.g. a closed <details>
                for (const match of node.textContent.matchAll(/\\S+/g)) {
                    const range = document.createRange();
                    range.setStart(node, match.index);
                    range.setEnd(node, match.index + match[0].length);
                    const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                    if (lines.size > 1) broken.push(match[0]);
                }
            }
            return broken;
        }"""
    )
    assert broken == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-phone-first-screen.png"))
    context.close()


# --- 4. The admin ------------------------------------------------------------------------------


def test_the_admin_asks_before_everyone_lists_short_and_shows_sent_ones_read_only(
    browser, base, server_env
):
    password = create_user(server_env, "ada", staff=True)
    reader_context = browser.new_context()
    reader = reader_context.new_page()
    open_page(reader, base + "/", "wss")  # one client the confirmation counts
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, base, "ada", password)
    page.goto(f"{base}/admin/realtime/broadcast/add/")
    fields = page.eval_on_selector_all(
        "form [name]:is(input, select, textarea):not([type=hidden])", "els => els.map(e => e.name)"
    )
    assert fields == ["message", "level", "audience", "_save"], fields
    expect(page.locator("input[name=_save]")).to_have_value("Send broadcast")
    long_text = "Planned maintenance: " + "the service restarts shortly. " * 20
    page.fill("#id_message", long_text)
    page.select_option("#id_level", "error")
    expect(page.locator("#broadcast-message-count")).to_have_text(
        f"{len(long_text)} / 2000 characters"
    )
    expect(page.locator("#broadcast-preview .broadcast-preview-label")).to_have_text("Error")
    page.click("input[name=_save]")
    reach = page.locator("#broadcast-reach")
    expect(reach).to_contain_text(re.compile(r"every connected client: [1-9]\d* now"))
    screenshot(page, "admin-confirm-everyone")
    expect(reader.locator("#broadcasts")).not_to_contain_text("Planned")  # not before the yes
    page.click("input[value='Yes, send to everyone']")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    expect(reader.locator("#broadcasts li").first).to_contain_text(
        "Planned maintenance", timeout=10_000
    )

    row = page.locator("#result_list tbody tr").first
    shown = row.locator("span[title]")
    assert shown.get_attribute("title") == long_text.strip()
    assert len(shown.inner_text()) <= 81 and shown.inner_text().endswith("…")
    screenshot(page, "admin-list")
    assert row.bounding_box()["height"] < 100
    row.locator("a").first.click()
    expect(page.locator("textarea, input[name=_save]")).to_have_count(0)
    expect(page.locator(".field-message .readonly")).to_contain_text("Planned maintenance")
    reader_context.close()
    context.close()


def test_the_admin_notification_action_reaches_the_users_page(browser, base, server_env):
    password = create_user(server_env, "ned", staff=True)
    wanda_password = create_user(server_env, "wanda", staff=False)
    wanda_context = browser.new_context()
    wanda = wanda_context.new_page()
    sign_in(wanda, base, "wanda", wanda_password)
    expect(wanda.locator("#connection")).to_have_attribute("data-state", "open", timeout=15_000)
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, base, "ned", password)
    page.goto(f"{base}/admin/auth/user/?q=wanda")
    page.locator("#result_list input[name=_selected_action]").first.check()
    page.select_option("select[name=action]", "send_notification")
    page.click("button[name=index]")
    page.fill("#id_text", "Your account was upgraded")
    page.select_option("#id_level", "success")
    screenshot(page, "admin-send-notification")
    page.click("text=Send notification")
    expect(page.locator(".messagelist")).to_contain_text("Sent a notification to 1 user(s).")
    item = wanda.locator("#notifications li").first
    expect(item).to_contain_text("Your account was upgraded", timeout=10_000)
    expect(item.locator(".level-label")).to_have_text("Success")
    wanda_context.close()
    context.close()
