// Run: node tests/js/test_page.mjs  (no dependencies): the demo page's pure helpers.
import assert from "node:assert/strict";
import { test } from "node:test";

import { connectionText } from "../../realtime/static/realtime/page.mjs";

test("the connection in words, from realtime.mjs's state events", () => {
  assert.equal(connectionText({ state: "connecting" }), "connecting");
  assert.equal(connectionText({ state: "open" }), "open");
  assert.equal(connectionText({ state: "paused" }), "live updates paused");
  assert.equal(
    connectionText({ state: "closed", code: 1006, reason: "", reconnectAt: 3400 }, 1000),
    "closed (code 1006) — reconnecting in 3 s",
  );
  assert.equal(
    connectionText({ state: "closed", code: 4001, reason: "Signed out", reconnectAt: 1000 }, 1000),
    "closed (code 4001: Signed out) — reconnecting in 0 s",
  );
  assert.equal(
    connectionText({ state: "closed", code: 1008, reason: "TLS required", reconnectAt: null }),
    "closed (code 1008: TLS required) — not reconnecting (policy violation)",
  );
  assert.equal(connectionText({ state: "closed", code: null, reason: "no network" }), "closed (no network)");
});
