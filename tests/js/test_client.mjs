// Run: node tests/js/test_client.mjs  (no dependencies)
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import vm from "node:vm";

const src = readFileSync(new URL("../../realtime/static/realtime/client.js", import.meta.url), "utf8");

function load(protocol, host = "example.test:8443") {
  const created = [];
  class FakeWebSocket { constructor(url) { this.url = url; this.readyState = 0; created.push(this); } }
  const window = { location: { protocol, host }, console };
  window.WebSocket = FakeWebSocket;
  const ctx = vm.createContext({ window, WebSocket: FakeWebSocket, console });
  vm.runInContext(src, ctx);
  return { api: window.realtime, created };
}

const { api } = load("http:");
assert.equal(api.schemeForPage("https:"), "wss");
assert.equal(api.schemeForPage("http:"), "ws");
assert.equal(api.schemeForPage("file:"), "ws");
assert.equal(api.schemeForPage(undefined), "ws");

for (const [protocol, expected] of [["https:", "wss://example.test:8443/ws/"], ["http:", "ws://example.test:8443/ws/"]]) {
  const { api: a, created } = load(protocol);
  const sock = a.createWebSocketConnection("/ws/");
  assert.equal(sock.url, expected);
  assert.equal(created.length, 1);
}

// Full-jitter backoff: 0 <= delay < min(30000, 500 * 2^attempt)
assert.equal(api.backoffDelay(0, () => 0), 0);
assert.equal(api.backoffDelay(0, () => 0.999999), 499);
assert.equal(api.backoffDelay(3, () => 0.5), 2000);
assert.equal(api.backoffDelay(10, () => 0.999999), 29999);
assert.equal(api.backoffDelay(1000, () => 0.5), 15000);

console.log("client.js tests passed");
