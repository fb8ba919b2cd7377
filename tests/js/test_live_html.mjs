// Run: node tests/js/test_live_html.mjs  (Node 20, no dependencies): the pure helpers of
// realtime/static/realtime/live_html.mjs. The element and the DOM actions are tested in
// Chromium under the server's CSP: tests/test_live_html_browser.py.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ACTIONS,
  REGION_AT_MOST_EVERY_MS,
  RELOAD_AT_MOST_EVERY_MS,
  applyFragment,
  isFragment,
  isServerFragment,
  mayReload,
  parseSince,
  regionWait,
  sameOrigin,
} from "../../realtime/static/realtime/live_html.mjs";

test("since: EPOCH:OFFSET is a position; anything else is none", () => {
  assert.deepEqual(parseSince("3f9a0c1d2e3b4a59:42"), { epoch: "3f9a0c1d2e3b4a59", offset: 42 });
  assert.deepEqual(parseSince(" e1:0 "), { epoch: "e1", offset: 0 });
  for (const text of [null, undefined, "", "42", ":42", "e1:", "e1:-1", "e1:1.5", "e1:x"]) {
    assert.equal(parseSince(text), null, String(text));
  }
});

test("a fragment: one of the seven actions, an element id as target, html but for remove", () => {
  assert.deepEqual(ACTIONS, ["append", "prepend", "replace", "update", "remove", "before", "after"]);
  for (const action of ACTIONS) {
    assert.equal(isFragment({ action, target: "orders-new", html: "<li></li>" }), true, action);
  }
  assert.equal(isFragment({ action: "remove", target: "order-7" }), true);
  const refused = [
    null,
    "append",
    { action: "append", target: "list" }, // no html
    { action: "innerHTML", target: "list", html: "" },
    { action: "append", target: "", html: "" },
    { action: "append", target: "#x, body", html: "" }, // a selector, not an id
    { action: "append", target: "a\tb", html: "" },
    { action: "append", target: "x".repeat(201), html: "" },
    { action: "append", target: 7, html: "" },
    { action: "update", target: "list", html: { toString: () => "<b>" } },
  ];
  for (const data of refused) {
    assert.equal(isFragment(data), false, JSON.stringify(data));
  }
  assert.equal(isFragment({ action: "append", target: "x".repeat(200), html: "" }), true);
});

test("not a fragment, or a missing target: nothing looked up or changed", () => {
  const looked = [];
  const doc = { getElementById: (id) => (looked.push(id), null) };
  assert.equal(applyFragment(doc, { action: "append", target: "*", html: "<p>" }), null);
  assert.equal(applyFragment(doc, { action: "remove", target: "gone" }), null);
  assert.deepEqual(looked, ["*", "gone"]);
  assert.equal(applyFragment(doc, { action: "append", target: "a b", html: "" }), null);
  assert.deepEqual(looked, ["*", "gone"]);
});

test("the page reloads at most once a minute per tab; without storage, never", () => {
  const items = new Map();
  const storage = { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, v) };
  assert.equal(mayReload(storage, 1_000_000), true);
  assert.equal(mayReload(storage, 1_000_000 + RELOAD_AT_MOST_EVERY_MS - 1), false);
  assert.equal(mayReload(storage, 1_000_000 + RELOAD_AT_MOST_EVERY_MS), true);
  assert.equal(mayReload(undefined, 0), false);
  const denied = { getItem: () => { throw new Error("SecurityError"); } };
  assert.equal(mayReload(denied, 0), false);
});

test("only the server's html messages are fragments: a client's publish (with from) never is", () => {
  const data = { action: "update", target: "board", html: "<form></form>" };
  assert.equal(isServerFragment({ event: "html", data, offset: 3 }), true);
  assert.equal(isServerFragment({ event: "html", data, from: { id: 7, username: "eve" } }), false);
  assert.equal(isServerFragment({ event: "html", data, from: null }), false); // anonymous
  assert.equal(isServerFragment({ event: "message", data }), false);
  assert.equal(isServerFragment(null), false);
});

test("a region is fetched from the page's own origin only", () => {
  const page = "https://app.test/orders/board/";
  assert.equal(sameOrigin("/orders/board/region/", page), true);
  assert.equal(sameOrigin("?fresh=1", page), true);
  assert.equal(sameOrigin("https://app.test:443/x", page), true);
  for (const url of ["https://evil.test/x", "//evil.test/x", "http://app.test/x", "javascript:alert(1)"]) {
    assert.equal(sameOrigin(url, page), false, url);
  }
});

test("a region is fetched at most once every REGION_AT_MOST_EVERY_MS per key; later ones wait", () => {
  const store = new Map();
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  assert.equal(regionWait(storage, "r:a", 1000), 0);
  assert.equal(regionWait(storage, "r:a", 4000), REGION_AT_MOST_EVERY_MS - 3000);
  assert.equal(regionWait(storage, "r:b", 4000), 0); // another topic
  assert.equal(regionWait(storage, "r:a", 1000 + REGION_AT_MOST_EVERY_MS), 0);
  const refusing = { getItem: () => { throw new Error("denied"); }, setItem() {} };
  assert.equal(regionWait(refusing, "r:a", 5), 0);
});
