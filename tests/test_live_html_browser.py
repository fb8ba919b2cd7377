"""Live HTML in Chromium (tests/browsing.py), on a daphne over TLS with the app's strict CSP:
realtime/static/realtime/live_html.mjs applies each of the seven actions to the element with
the target's id and nothing else (a selector finds nothing), never leaves two elements with
one id, and markup in a fragment neither runs a script nor an inline handler.

The DOM tests open a page of the served site (so its CSP header applies) and import the module
with `import()`, allowed by script-src 'self'; page.evaluate itself runs through DevTools,
which the CSP does not govern, and only builds the test's markup and calls the module.

End to end, a test page (tests/live_html_urls.py, served with tests/live_html_settings.py: a
topic history of 3) follows a topic through `{% realtime_stream %}` and its signed name;
fragments sent by `manage.py shell` (realtime.fragments) change it, a reconnect resumes them
each once, and a page that missed more than the history holds, or whose signed name expired,
fetches its region again (the page itself reloads only without a region, at most once a
minute).
"""

from __future__ import annotations

import pytest

from tests.browsing import HOST, Page, expect
from tests.helpers import daphne_tls_args, free_port, run_in_shell

SETTINGS = "tests.live_html_settings"
TOPIC = "live.test"  # the test page's (tests/live_html_urls.py)

# The test's markup, made with DOM calls (no markup parsed outside the module under test):
# <main id="stage"><ul id="list"><li id="a">A</li></ul><ul id="other"><li id="b">B</li></ul>
# <p id="p">P</p></main>
STAGE = """async () => {
    window.live = await import("/static/realtime/live_html.mjs");
    const el = (tag, id, text, ...children) => {
        const e = document.createElement(tag);
        e.id = id;
        if (text) e.textContent = text;
        e.append(...children);
        return e;
    };
    document.getElementById("stage")?.remove();
    const stage = el("main", "stage", "",
        el("ul", "list", "", el("li", "a", "A")),
        el("ul", "other", "", el("li", "b", "B")),
        el("p", "p", "P"));
    document.body.append(stage);
    window.apply = (data) => {
        const changed = live.applyFragment(document, data);
        return changed === document ? "document" : changed ? changed.id : null;
    };
    window.stage = () => document.getElementById("stage").innerHTML;
}"""


@pytest.fixture(scope="module")
def served(start, app_test_certs, redis_server):
    port = free_port()
    return start(
        daphne_tls_args(port, app_test_certs),
        port,
        DJANGO_ALLOWED_HOSTS=f"{HOST},localhost",
        DJANGO_SETTINGS_MODULE=SETTINGS,
        REDIS_URL=redis_server.url,
    )


@pytest.fixture(scope="module")
def base(served) -> str:
    return f"https://{HOST}:{served.port}"


@pytest.fixture(scope="module")
def shell(server_env, redis_server):
    """Runs Python in `manage.py shell` against the served database and Redis; its output."""
    env = {**server_env, "REDIS_URL": redis_server.url, "DJANGO_SETTINGS_MODULE": SETTINGS}
    return lambda code: run_in_shell(env, code)


@pytest.fixture
def staged(page: Page, base: str) -> Page:
    """A served page (its CSP) with the module imported and the test's markup on it."""
    page.add_init_script(
        "window.cspViolations = []; document.addEventListener('securitypolicyviolation',"
        " e => window.cspViolations.push(e.violatedDirective))"
    )
    page.goto(f"{base}/accounts/login/")
    csp = page.evaluate("fetch(location.href).then(r => r.headers.get('content-security-policy'))")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page.evaluate(STAGE)
    return page


def apply(page: Page, action: str, target: str, html: str | None = None) -> str | None:
    data = {"action": action, "target": target}
    if html is not None:
        data["html"] = html
    return page.evaluate("data => apply(data)", data)


def stage(page: Page) -> str:
    return page.evaluate("stage()")


def test_each_action_changes_the_element_with_the_target_id(staged):
    assert apply(staged, "append", "list", '<li id="c">C</li>') == "list"
    assert apply(staged, "prepend", "list", '<li id="z">Z</li>') == "list"
    assert apply(staged, "before", "p", '<h2 id="h">H</h2>') == "stage"
    assert apply(staged, "after", "p", "<footer id=f>F</footer>tail") == "stage"
    assert apply(staged, "replace", "b", '<li id="b" class="new">B2</li>') == "other"
    assert apply(staged, "update", "p", "<em>new</em> text") == "p"
    assert stage(staged) == (
        '<ul id="list"><li id="z">Z</li><li id="a">A</li><li id="c">C</li></ul>'
        '<ul id="other"><li id="b" class="new">B2</li></ul>'
        '<h2 id="h">H</h2><p id="p"><em>new</em> text</p><footer id="f">F</footer>tail'
    )
    assert apply(staged, "remove", "a") == "document"
    assert apply(staged, "remove", "other") == "document"
    assert stage(staged) == (
        '<ul id="list"><li id="z">Z</li><li id="c">C</li></ul>'
        '<h2 id="h">H</h2><p id="p"><em>new</em> text</p><footer id="f">F</footer>tail'
    )


def test_a_target_is_an_id_only_a_selector_or_a_missing_id_changes_nothing(staged):
    before = staged.evaluate("document.body.innerHTML")
    for target in ("#list, body", "*", "body", "#list", "ul li", "list li", "missing"):
        for action in ("append", "replace", "update", "remove", "before"):
            assert apply(staged, action, target, '<li id="x">X</li>') is None, (action, target)
    assert apply(staged, "explode", "list", "<li>X</li>") is None
    assert apply(staged, "append", "list", None) is None  # no html
    assert staged.evaluate("document.body.innerHTML") == before


def test_an_element_is_never_on_the_page_twice_a_known_id_moves(staged):
    for _ in range(2):  # a replayed fragment
        apply(staged, "append", "list", '<li id="c">C</li>')
        apply(staged, "prepend", "list", '<li id="z">Z</li>')
        apply(staged, "after", "p", '<aside id="s">S</aside>')
        apply(staged, "before", "p", '<aside id="t">T</aside>')
    # An element whose id is elsewhere moves (an order that changed column), the new copy wins.
    apply(staged, "append", "other", '<li id="a">A moved</li><li id="d">D</li>')
    assert stage(staged) == (
        '<ul id="list"><li id="z">Z</li><li id="c">C</li></ul>'
        '<ul id="other"><li id="b">B</li><li id="a">A moved</li><li id="d">D</li></ul>'
        '<aside id="t">T</aside><p id="p">P</p><aside id="s">S</aside>'
    )
    assert staged.evaluate("document.querySelectorAll('[id=a], [id=c], [id=s]').length") == 3


def test_markup_in_a_fragment_runs_no_script_nor_inline_handler_under_the_csp(staged):
    injected = (
        '<script>window.injected = 1</script><img id="i" src="x" onerror="window.injected = 2">'
    )
    for action, target in (("append", "list"), ("update", "p"), ("replace", "b")):
        apply(staged, action, target, injected)
        staged.wait_for_function("() => document.getElementById('i').complete")
        staged.evaluate("document.getElementById('i').remove()")
    staged.wait_for_function("() => window.cspViolations.length >= 3")
    assert staged.evaluate("window.injected") is None
    # The handlers were refused by the policy (the scripts never even ran as far as asking).
    assert set(staged.evaluate("window.cspViolations")) == {"script-src-attr"}
    # What Django escaped arrives as text.
    apply(staged, "update", "p", "&lt;script&gt;window.injected = 3&lt;/script&gt;&lt;b&gt;")
    assert staged.evaluate("document.getElementById('p').textContent") == (
        "<script>window.injected = 3</script><b>"
    )
    assert staged.evaluate("document.querySelectorAll('#p *').length") == 0
    assert staged.evaluate("window.injected") is None


# --- End to end: {% realtime_stream %} on the test page --------------------------------------

# Before the page's scripts: its sockets, a switch that sends reconnects to a path the server
# refuses (the page is offline until it is turned off), quick reconnects, and the events.
OFFLINE_SWITCH = """(() => {
    const Native = WebSocket;
    window.sockets = [];
    window.offline = false;
    window.WebSocket = class extends Native {
        constructor(url, protocols) {
            super(window.offline ? url.replace("/ws/", "/ws-offline/") : url, protocols);
            window.sockets.push(this);
        }
    };
    Math.random = () => 0.1;
    window.fragments = [];
    document.addEventListener("realtime:fragment", (e) => window.fragments.push(
        [e.detail.action, e.detail.target, e.detail.offset, e.target.id || "document"]));
    window.ended = [];
    document.addEventListener("realtime:stream-end", (e) => window.ended.push(e.detail));
})()"""


def send(shell, *fragments: tuple) -> None:
    """fragments.send() of (action, target, html format, *its arguments), in one shell run:
    the arguments are escaped by format_html, as a template's variables are."""
    code = "from django.utils.html import format_html\nfrom realtime import fragments\n"
    for action, target, *html in fragments:
        given = f"html=format_html({', '.join(map(repr, html))})" if html else ""
        code += f"fragments.send({TOPIC!r}, {action!r}, {target!r}, {given})\n"
    shell(code)


def live_page(page: Page, base: str) -> str:
    """The test page, subscribed; returns its render's id."""
    page.add_init_script(OFFLINE_SWITCH)
    page.goto(f"{base}/live-test/")
    subscribed(page)
    page.evaluate("window.loaded = true")  # gone if the page itself reloads
    return render_of(page)


def subscribed(page: Page) -> None:
    expect(page.locator("realtime-stream")).to_have_attribute("state", "subscribed", timeout=15_000)


def render_of(page: Page) -> str:
    return page.locator("#board").get_attribute("data-render")


def items(page: Page) -> list[str]:
    return page.locator("#items li").all_text_contents()


def go_offline(page: Page) -> None:
    page.evaluate("window.offline = true; window.sockets.at(-1).close()")
    expect(page.locator("realtime-stream")).to_have_attribute("state", "closed")


def test_fragments_sent_by_the_server_change_the_page_and_a_reconnect_resumes_each_once(
    page, base, shell
):
    rendered = live_page(page, base)
    assert page.locator("realtime-stream").get_attribute("signed")
    send(shell, ("append", "items", '<li id="item-1">{}</li>', "one <b>bold</b>"),
         ("append", "items", '<li id="item-2">{}</li>', "two"))  # fmt: skip
    expect(page.locator("#items li")).to_have_count(2)
    assert items(page) == ["one <b>bold</b>", "two"]  # escaped by the server: text

    go_offline(page)
    send(shell, ("replace", "item-1", '<li id="item-1">{}</li>', "one again"),
         ("remove", "item-2"), ("append", "items", '<li id="item-3">{}</li>', "three"))  # fmt: skip
    page.evaluate("window.offline = false")
    subscribed(page)
    expect(page.locator("#items li")).to_have_text(["one again", "three"])
    events = page.evaluate("window.fragments")
    first = events[0][2]
    assert events == [
        ["append", "items", first, "items"],
        ["append", "items", first + 1, "items"],
        ["replace", "item-1", first + 2, "items"],
        ["remove", "item-2", first + 3, "document"],
        ["append", "items", first + 4, "items"],
    ]
    assert render_of(page) == rendered and page.evaluate("window.loaded")  # nothing reloaded


def test_a_page_that_missed_more_than_the_history_holds_fetches_its_region_again(page, base, shell):
    rendered = live_page(page, base)
    send(shell, ("append", "items", '<li id="stale">{}</li>', "shown before"))
    expect(page.locator("#items li")).to_have_text(["shown before"])
    go_offline(page)
    send(shell, *[("append", "items", f'<li id="missed-{n}">{{}}</li>', n) for n in range(5)])
    page.evaluate("window.offline = false")
    # resume_failed: the region is the fresh render's (its list as the server has it now).
    expect(page.locator("#board")).not_to_have_attribute("data-render", rendered)
    subscribed(page)
    assert items(page) == [] and page.evaluate("window.loaded")
    latest = shell(
        "from realtime.messaging import streams\nprint(streams.position('live.test')[1])"
    )
    expect(page.locator("#position")).to_have_text(latest.strip())
    send(shell, ("append", "items", '<li id="after">{}</li>', "after"))
    expect(page.locator("#items li")).to_have_text(["after"])


# An element connected again with `signed` (and `region`) changed, as a page left open.
RECONNECT_ELEMENT = """([name, value]) => {
    const element = document.querySelector("realtime-stream");
    element.remove();
    if (value === null) element.removeAttribute(name); else element.setAttribute(name, value);
    document.getElementById("board").prepend(element);
}"""


def test_an_expired_signed_name_fetches_the_region_again_or_else_reloads_once_a_minute(
    page, base, shell
):
    rendered = live_page(page, base)
    expired = shell(
        "import time\nfrom unittest import mock\nfrom realtime import fragments\n"
        "with mock.patch('django.core.signing.time.time', return_value=time.time() - 86401):\n"
        f"    print(fragments.signed_stream({TOPIC!r}, None))\n"
    ).strip()
    page.evaluate(RECONNECT_ELEMENT, ["signed", expired])
    expect(page.locator("#board")).not_to_have_attribute("data-render", rendered)
    subscribed(page)
    assert page.evaluate("window.loaded") and page.evaluate("window.ended") == []

    # Without a region the page reloads; again within the minute, it ends and says so.
    for reloads in (True, False):
        page.evaluate("window.loaded = true")
        page.evaluate(RECONNECT_ELEMENT, ["region", None])
        page.evaluate(RECONNECT_ELEMENT, ["signed", expired])
        if reloads:
            page.wait_for_function("() => !window.loaded")
            subscribed(page)
    expect(page.locator("realtime-stream")).to_have_attribute("state", "ended")
    assert page.evaluate("window.ended") == [{"topic": TOPIC, "reason": "stream_expired"}]
    assert page.evaluate("window.loaded")


def test_a_forged_signed_name_ends_the_stream(page, base):
    live_page(page, base)
    page.evaluate(RECONNECT_ELEMENT, ["signed", "forged"])
    expect(page.locator("realtime-stream")).to_have_attribute("state", "ended")
    assert page.evaluate("window.ended") == [{"topic": TOPIC, "reason": "forbidden"}]
