"""The example's live order board in Chromium (tests/browsing.py), on `serve --workers 2` with
Redis: two staff boards on different workers follow what a third staff member does in the
Django admin (an order created, moved to another column, its item changed, deleted), without
reloading; markup typed into an order shows as text. One board loses its worker (SIGKILL) and
its network while orders change, and shows each order once, where it now belongs, when it is
back. axe-core finds no WCAG A or AA violation on the board.
The page itself: tests/test_order_board_views.py."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.browsing import HOST, Page, expect, screenshot
from tests.helpers import PYTHON, create_users, free_port, slot, wait_until
from tests.test_page_ui import axe_violations

STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")
COLUMNS = ("new", "preparing", "ready")
MARKUP = "<b>x</b><script>window.pwned=1</script>"
# The page's one connection (live_html.mjs), imported from the URL the page loaded it from.
WORKER = """async () => {
    const src = document.querySelector('script[src*="live_html"]').src;
    return (await import(src)).connection().state().welcome.worker;
}"""
# Each column's cards, as "<id> <item>", in the page's order.
BOARD = """columns => Object.fromEntries(columns.map(status => [status,
    [...document.querySelectorAll(`#orders-${status} > li`)].map(
        li => `${li.id} ${li.querySelector('.order-item').textContent}`)]))"""


@pytest.fixture(scope="module")
def served(start, app_test_certs, redis_server):
    port = free_port()
    certificate = ["--cert", str(app_test_certs.cert), "--key", str(app_test_certs.key)]
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port), *certificate],
        port,
        DJANGO_ALLOWED_HOSTS=f"{HOST},localhost",
        REDIS_URL=redis_server.url,
    )
    wait_until(lambda: len(set(dict(STARTED.findall(server.log())))) >= 2, "both workers")
    return server


@pytest.fixture(scope="module")
def users(server_env):
    # Names of this module's own: the servers' database is shared by every module of a run.
    return create_users(server_env, {"board-ann": True, "board-ben": True, "board-cook": True})


@pytest.fixture(scope="module")
def base(served) -> str:
    return f"https://{HOST}:{served.port}"


def signed_in(browser, base: str, username: str, users: dict, then: str) -> Page:
    """A browser context of its own (its own cookies), signed in as `username`, at `then`."""
    page = browser.new_context().new_page()
    page.add_init_script(
        "window.cspViolations = []; document.addEventListener('securitypolicyviolation',"
        " e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI))"
    )
    page.goto(f"{base}/accounts/login/?next={then}")
    page.fill("#id_username", username)
    page.fill("#id_password", users[username])
    page.press("#id_password", "Enter")
    expect(page).to_have_url(f"{base}{then}")
    return page


def live(page: Page) -> None:
    """The board follows its topic, and says so."""
    stream = page.locator("realtime-stream")
    expect(stream).to_have_attribute("state", "subscribed", timeout=20_000)
    says(page, "Live: changes show here as they are made.")


def says(page: Page, state: str) -> None:
    """What the board's status line shows (its other words are hidden by board.css)."""
    expect(page.locator(".board-state")).to_have_text(state, use_inner_text=True)


def open_board(browser, base: str, username: str, users: dict) -> Page:
    page = signed_in(browser, base, username, users, "/orders/board/")
    live(page)
    return page


def on_another_worker(board: Page, other: Page) -> None:
    """Reload `board` until its socket is on another worker than `other`'s."""
    for _ in range(20):
        if board.evaluate(WORKER) != other.evaluate(WORKER):
            return
        board.reload()
        live(board)
    raise AssertionError("both boards stayed on one worker")


def board_of(page: Page) -> dict[str, list[str]]:
    return page.evaluate(BOARD, list(COLUMNS))


def shows(page: Page, expected: dict[str, list[str]]) -> None:
    """Wait until the board's columns hold exactly these cards (each column in any order)."""
    want = {status: sorted(expected.get(status, [])) for status in COLUMNS}
    wait_until(
        lambda: {s: sorted(c) for s, c in board_of(page).items()} == want,
        f"the board to show {want} (it shows {board_of(page)})",
        timeout=10,
    )


class Admin:
    """A staff member in Django's admin, in a browser: the forms a person fills in."""

    def __init__(self, page: Page, base: str) -> None:
        self.page, self.base = page, base
        self.changelist = f"{base}/admin/demo/order/"

    def add(self, customer: str, item: str) -> int:
        self.page.goto(f"{self.changelist}add/")
        self.page.fill("#id_customer", customer)
        self.page.fill("#id_item", item)
        self.page.click("input[name=_continue]")  # "Save and continue editing"
        expect(self.page).to_have_url(re.compile(r"/admin/demo/order/\d+/change/$"))
        return int(re.search(r"/order/(\d+)/change/", self.page.url).group(1))

    def change(self, pk: int, *, item: str | None = None, status: str | None = None) -> None:
        self.page.goto(f"{self.changelist}{pk}/change/")
        if item is not None:
            self.page.fill("#id_item", item)
        if status is not None:
            self.page.select_option("#id_status", status)
        self.saved()

    def set_status_in_list(self, pk: int, status: str) -> None:
        """The changelist's editable status column: its Save saves each changed row."""
        self.page.goto(self.changelist)
        row = self.page.locator(f"input[name$='-id'][value='{pk}']").get_attribute("name")
        self.page.select_option(f"select[name='{row.removesuffix('-id')}-status']", status)
        self.saved()

    def delete(self, pk: int) -> None:
        self.page.goto(f"{self.changelist}{pk}/delete/")
        self.page.click("input[type=submit]")  # "Yes, I'm sure"
        expect(self.page).to_have_url(self.changelist)

    def saved(self) -> None:
        self.page.click("input[name=_save]")
        expect(self.page).to_have_url(self.changelist)
        expect(self.page.locator(".messagelist")).to_contain_text("successfully")


def card(pk: int, item: str) -> str:
    return f"order-{pk} {item}"


def test_two_boards_follow_the_admin_through_a_killed_worker_without_reloading(
    browser, base, served, users
):
    started = time.monotonic()
    ann = open_board(browser, base, "board-ann", users)
    ben = open_board(browser, base, "board-ben", users)
    on_another_worker(ben, ann)
    boards = (ann, ben)
    for board in boards:
        board.evaluate("window.notReloaded = true")
        expect(board.locator(".empty")).to_have_count(3)
        expect(board.locator(".empty").first).to_be_visible()  # "No orders."
    admin = Admin(signed_in(browser, base, "board-cook", users, "/admin/"), base)

    soup = admin.add("Ada", "Soup")
    for board in boards:
        shows(board, {"new": [card(soup, "Soup")]})
        expect(board.locator("#orders-new + .empty")).to_be_hidden()
    tricky = admin.add("Eve", MARKUP)
    admin.change(soup, status="preparing")  # the change form moves it
    admin.set_status_in_list(tricky, "preparing")  # so does the list's status column
    expected = {"preparing": [card(soup, "Soup"), card(tricky, MARKUP)]}
    for board in boards:
        shows(board, expected)  # the markup is the card's text
        assert board.evaluate("window.pwned") is None
        assert board.locator(f"#order-{tricky} b, #order-{tricky} script").count() == 0
    for board in boards:  # a changed item: the card replaced where it was
        board.evaluate(f"document.getElementById('order-{soup}').dataset.old = 'yes'")
    admin.change(soup, item="Soup, no onions")
    expected = {"preparing": [card(soup, "Soup, no onions"), card(tricky, MARKUP)]}
    for board in boards:
        wait_until(lambda b=board: board_of(b) == expected | {"new": [], "ready": []}, "in place")
        assert board.evaluate(f"document.getElementById('order-{soup}').dataset.old") is None
    admin.delete(tricky)
    expected = {"preparing": [card(soup, "Soup, no onions")]}
    for board in boards:
        shows(board, expected)
    violations = axe_violations(ann)
    screenshot(ann, "order-board")

    # Ben's worker dies and his network is down while the orders change; Ann's board follows.
    pid = int(dict(STARTED.findall(served.log()))[slot(ben.evaluate(WORKER))])
    ben.context.set_offline(True)
    os.kill(pid, signal.SIGKILL)
    says(ben, "Connecting…")
    tea = admin.add("Bo", "Tea")
    admin.change(soup, status="ready")
    admin.change(tea, item="Green tea")
    cake = admin.add("Cy", "Cake")
    admin.delete(cake)
    expected = {"new": [card(tea, "Green tea")], "ready": [card(soup, "Soup, no onions")]}
    shows(ann, expected)
    assert ben.locator(".board-state").inner_text() == "Connecting…"  # still away
    assert board_of(ben) == {"new": [], "preparing": [card(soup, "Soup, no onions")], "ready": []}
    ben.context.set_offline(False)
    live(ben)
    shows(ben, expected)
    time.sleep(0.5)  # a copy would arrive now
    for board in boards:
        assert board_of(board) == expected | {"preparing": []}
        assert board.evaluate("window.notReloaded") is True  # no navigation: all live
        assert board.evaluate("window.cspViolations") == []
    assert violations == []
    assert axe_violations(ben) == []
    screenshot(ben, "order-board-after-the-kill")
    for page in (ann, ben, admin.page):
        page.context.close()
    assert time.monotonic() - started < 40
