"""Live HTML in Chromium (tests/browsing.py), on a daphne over TLS with the app's strict CSP:
realtime/static/realtime/live_html.mjs applies each of the seven actions to the element with
the target's id and nothing else (a selector finds nothing), never leaves two elements with
one id, and markup in a fragment neither runs a script nor an inline handler.

The DOM tests open a page of the served site (so its CSP header applies) and import the module
with `import()`, allowed by script-src 'self'; page.evaluate itself runs through DevTools,
which the CSP does not govern, and only builds the test's markup and calls the module.
"""

from __future__ import annotations

import pytest

from tests.browsing import HOST, Page

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
def base(https_server) -> str:
    return f"https://{HOST}:{https_server.port}"


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
        staged.wait_for_function("document.getElementById('i').complete")
        staged.evaluate("document.getElementById('i').remove()")
    staged.wait_for_function("window.cspViolations.length >= 3")
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
