// Run: node tests/js/test_page.mjs  (no dependencies): the page's pure helpers.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  announcement,
  closeText,
  connectionText,
  formatTime,
  mayReload,
  notificationShown,
} from "../../realtime/static/realtime/page.mjs";

test("the connection in plain words; secure or live only while open", () => {
  assert.equal(connectionText({ state: "connecting" }, true), "Connecting…");
  assert.equal(connectionText({ state: "open" }, true), "Connected securely");
  assert.equal(connectionText({ state: "open" }, false), "Connected (not encrypted)");
  assert.match(connectionText({ state: "paused" }, true), /^Live updates paused/);
  const closed = { state: "closed", code: 1006, reason: "", reconnectAt: 3400 };
  assert.equal(connectionText(closed, true, 1000), "Reconnecting in 3 s");
  assert.equal(connectionText({ ...closed, reconnectAt: 1000 }, true, 1000), "Reconnecting…");
  assert.equal(
    connectionText({ state: "closed", code: 1008, reason: "TLS required", reconnectAt: null }, true),
    "Disconnected. Reload the page to try again.",
  );
  assert.equal(connectionText({ state: "closed", code: 1000, reason: "client closed" }, true), "Disconnected");
  for (const state of ["connecting", "paused", "closed"]) {
    assert.doesNotMatch(connectionText({ state, code: 1006, reconnectAt: 5000 }, true, 0), /secure|connected/i);
  }
});

test("close codes in the details are named", () => {
  assert.equal(closeText(1006, ""), "1006 (abnormal closure: no close frame)");
  assert.equal(closeText(4001, "Signed out"), "4001 (signed out or access changed: Signed out)");
  assert.equal(closeText(4999, ""), "4999");
  assert.equal(closeText(null, "no network"), "no network");
  assert.equal(closeText(null, ""), "—");
});

test("one time format: relative for the last day, the exact time in the title", () => {
  const now = Date.parse("2026-11-30T12:00:00Z");
  const at = (ms) => new Date(now - ms).toISOString();
  assert.equal(formatTime(at(10_000), now, "en").text, "now");
  assert.equal(formatTime(at(5 * 60_000), now, "en").text, "5 minutes ago");
  assert.equal(formatTime(at(3 * 3600_000), now, "en").text, "3 hours ago");
  assert.equal(formatTime(at(-20_000), now, "en").text, "now"); // a server clock a bit ahead
  const old = formatTime("2026-11-01T09:30:00Z", now, "en");
  assert.match(old.text, /Nov 1, 2026/);
  assert.match(old.title, /Sunday, November 1, 2026/);
  assert.match(formatTime(at(60_000), now, "de").text, /vor 1 Minute/);
  assert.deepEqual(formatTime("", now), { text: "", title: "" });
  assert.deepEqual(formatTime("not a time", now), { text: "", title: "" });
});

test("what a notification shows: its text and level, or an app message's data", () => {
  const sent = "2026-11-30T12:00:00+00:00";
  assert.deepEqual(notificationShown({ text: "Export ready", level: "success", sent_at: sent }), {
    text: "Export ready",
    level: "success",
    sentAt: sent,
  });
  assert.deepEqual(notificationShown({ text: "x", level: "<b>" }), { text: "x", level: "info", sentAt: "" });
  assert.deepEqual(notificationShown("plain"), { text: "plain", level: "info", sentAt: "" });
  assert.deepEqual(notificationShown({ order: 42 }), { text: '{"order":42}', level: "info", sentAt: "" });
});

test("the page reloads itself at most once a minute", () => {
  assert.equal(mayReload(0, 1_000_000), true);
  assert.equal(mayReload(1_000_000, 1_000_000 + 59_999), false);
  assert.equal(mayReload(1_000_000, 1_000_000 + 60_000), true);
});

test("items arriving together are announced in one sentence", () => {
  assert.equal(announcement(["Info broadcast: a"]), "Info broadcast: a");
  assert.equal(
    announcement(["Info broadcast: a", "Notification: b", "Error broadcast: c"]),
    "3 new updates. Latest: Error broadcast: c",
  );
});
