// Run: node tests/js/test_realtime_module.mjs  (Node 20, no dependencies)
// Drives realtime/static/realtime/realtime.mjs through a fake WebSocket and fake timers.
import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffDelay, connect, websocketUrl } from "../../realtime/static/realtime/realtime.mjs";

// ---------------------------------------------------------------- fakes

function fakeClock() {
  let now = 0;
  let nextId = 1;
  const timers = new Map(); // id -> {at, fn, every}
  function add(fn, ms, every) {
    const id = nextId++;
    timers.set(id, { at: now + Math.max(0, ms | 0), fn, every });
    return id;
  }
  return {
    now: () => now,
    setTimeout: (fn, ms) => add(fn, ms, null),
    setInterval: (fn, ms) => add(fn, ms, Math.max(1, ms | 0)),
    clearTimeout: (id) => timers.delete(id),
    clearInterval: (id) => timers.delete(id),
    pending: () => Array.from(timers.values()),
    advance(ms) {
      const end = now + ms;
      for (;;) {
        let due = null;
        for (const [id, t] of timers) {
          if (t.at <= end && (!due || t.at < due[1].at)) {
            due = [id, t];
          }
        }
        if (!due) {
          break;
        }
        const [id, t] = due;
        now = t.at;
        if (t.every) {
          t.at += t.every;
        } else {
          timers.delete(id);
        }
        t.fn();
      }
      now = end;
    },
  };
}

function fakeSockets() {
  const created = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      created.push(this);
    }
    send(data) {
      assert.equal(this.readyState, 1, "send on a socket that is not open");
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }
    // server side
    open() {
      this.readyState = 1;
      this.onopen({});
    }
    receive(obj) {
      this.onmessage({ data: JSON.stringify(obj) });
    }
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose({ code, reason });
    }
    sentOf(type) {
      return this.sent.filter((m) => m.type === type);
    }
  }
  return { FakeWebSocket, created, last: () => created[created.length - 1] };
}

const WELCOME = {
  type: "welcome",
  protocol: 3,
  secure: true,
  scheme: "wss",
  worker: "h-w1",
  user: "alice",
  tls: null,
  idle_timeout: 300,
  broadcasts: { epoch: "e1", offset: 17 },
  user_topic: { epoch: "e2", offset: 3 },
};

function welcome(extra = {}) {
  return Object.assign({}, WELCOME, extra);
}

// A client on a fake https page, its fakes, and a record of every event.
function setup(options = {}) {
  const clock = fakeClock();
  const sockets = fakeSockets();
  let ids = 0;
  const rt = connect(
    Object.assign(
      {
        url: "wss://example.test/ws/",
        WebSocket: sockets.FakeWebSocket,
        random: () => 0.5,
        randomUUID: () => `id-${++ids}`,
        now: clock.now,
        setTimeout: clock.setTimeout,
        clearTimeout: clock.clearTimeout,
        setInterval: clock.setInterval,
        clearInterval: clock.clearInterval,
      },
      options
    )
  );
  const events = {};
  for (const name of ["state", "broadcast", "message", "presence", "error", "resume_failed", "unsubscribed", "reload"]) {
    events[name] = [];
    rt.on(name, (value) => events[name].push(value));
  }
  return { rt, clock, sockets, events, ws: () => sockets.last() };
}

// Open the current socket and send it the welcome.
function welcomed(ctx, extra) {
  ctx.ws().open();
  ctx.ws().receive(welcome(extra));
  return ctx.ws();
}

// ---------------------------------------------------------------- pure helpers

test("backoffDelay is full jitter under min(30 s, 500 ms * 2^attempt)", () => {
  assert.equal(backoffDelay(0, () => 0), 0);
  assert.equal(backoffDelay(0, () => 0.999999), 499);
  assert.equal(backoffDelay(3, () => 0.5), 2000);
  assert.equal(backoffDelay(10, () => 0.999999), 29999);
  assert.equal(backoffDelay(1000, () => 0.5), 15000);
});

test("URL: wss: for an https page, ws: otherwise; url overrides path", () => {
  assert.equal(websocketUrl({ protocol: "https:", host: "h:8443" }, "/ws/"), "wss://h:8443/ws/");
  assert.equal(websocketUrl({ protocol: "http:", host: "h" }, "ws/"), "ws://h/ws/");
  const saved = Object.getOwnPropertyDescriptor(globalThis, "location");
  try {
    for (const [protocol, expected] of [
      ["https:", "wss://example.test:8443/ws/"],
      ["http:", "ws://example.test:8443/ws/"],
    ]) {
      Object.defineProperty(globalThis, "location", {
        value: { protocol, host: "example.test:8443" },
        configurable: true,
      });
      const ctx = setup({ url: undefined });
      assert.equal(ctx.ws().url, expected);
      ctx.rt.close();
    }
    const custom = setup({ url: undefined, path: "/live/" });
    assert.equal(custom.ws().url, "ws://example.test:8443/live/");
    const explicit = setup({ url: "wss://other.test/x/" });
    assert.equal(explicit.ws().url, "wss://other.test/x/");
  } finally {
    if (saved) {
      Object.defineProperty(globalThis, "location", saved);
    } else {
      delete globalThis.location;
    }
  }
});

// ---------------------------------------------------------------- connection

test("connecting, then open on the welcome; no resume on a first connection without a position", () => {
  const ctx = setup();
  assert.equal(ctx.rt.state().state, "connecting");
  ctx.ws().open();
  assert.equal(ctx.rt.state().state, "connecting");
  assert.equal(ctx.rt.send({ type: "ping" }), true);
  const ws = welcomed(ctx);
  assert.equal(ctx.rt.state().state, "open");
  assert.equal(ctx.rt.state().welcome.worker, "h-w1");
  // connect() is "connecting" before any listener can be added: only changes after it are events
  assert.deepEqual(ctx.events.state.map((s) => s.state), ["open"]);
  assert.deepEqual(ws.sentOf("resume"), []);
  assert.deepEqual(ctx.rt.state().broadcasts, { epoch: "e1", offset: 17 });
});

test("options.broadcasts: the first socket resumes from it in its URL", () => {
  const ctx = setup({ broadcasts: { epoch: "e1", offset: 12 } });
  const ws = welcomed(ctx);
  assert.ok(ws.url.endsWith("/ws/?broadcasts=e1%3A12"), ws.url);
  assert.deepEqual(ws.sentOf("resume"), []);
  ws.receive({ type: "broadcast", id: 40, offset: 13, message: "replayed" });
  ws.receive({ type: "resumed", epoch: "e1", offset: 17, replayed: 1 });
  assert.deepEqual(ctx.rt.state().broadcasts, { epoch: "e1", offset: 17 });
  assert.deepEqual(ctx.events.broadcast.map((b) => b.id), [40]);
});

test("broadcasts delivered once: repeated offset or id dropped, gaps allowed", () => {
  const ctx = setup();
  const ws = welcomed(ctx);
  ws.receive({ type: "broadcast", id: 42, offset: 18, message: "a" });
  ws.receive({ type: "broadcast", id: 42, offset: 18, message: "a" });
  ws.receive({ type: "broadcast", id: 41, offset: 17, message: "old" });
  ws.receive({ type: "broadcast", id: 45, offset: 21, message: "gap" });
  ws.receive({ type: "broadcast", id: 45, offset: 22, message: "same id" });
  ws.receive({ type: "broadcast", id: 44, offset: 20, message: "late" });
  assert.deepEqual(ctx.events.broadcast.map((b) => b.id), [42, 45]);
  assert.deepEqual(ctx.rt.state().broadcasts, { epoch: "e1", offset: 21 });
});

test("subscribe: subscribe sent once open, subscribed, then messages in order and once", () => {
  const ctx = setup();
  const got = [];
  ctx.rt.subscribe("orders.42", (m) => got.push(m.data));
  assert.deepEqual(ctx.ws().sent, []);
  const ws = welcomed(ctx);
  assert.deepEqual(ws.sentOf("subscribe"), [{ type: "subscribe", topic: "orders.42" }]);
  ws.receive({ type: "message", topic: "orders.42", event: "message", data: "early", offset: 5 });
  ws.receive({ type: "subscribed", topic: "orders.42", epoch: "e3", offset: 6 });
  ws.receive({ type: "message", topic: "orders.42", event: "message", data: { n: 7 }, offset: 7 });
  ws.receive({ type: "message", topic: "orders.42", event: "message", data: { n: 7 }, offset: 7 });
  ws.receive({ type: "message", topic: "orders.42", event: "message", data: { n: 8 }, offset: 8 });
  ws.receive({ type: "message", topic: "other", event: "message", data: "not mine", offset: 1 });
  assert.deepEqual(got, [{ n: 7 }, { n: 8 }]);
  assert.deepEqual(ctx.events.message.map((m) => m.offset), [7, 8]);
  assert.deepEqual(ctx.rt.state().topics, { "orders.42": { epoch: "e3", offset: 8 } });

  // subscribing while open sends at once
  ctx.rt.subscribe("orders.43", () => {});
  assert.deepEqual(ws.sentOf("subscribe")[1], { type: "subscribe", topic: "orders.43" });
});

test("a subscribe from the open state listener is sent once", () => {
  const ctx = setup();
  ctx.rt.subscribe("a", () => {});
  ctx.rt.on("state", (s) => s.state === "open" && ctx.rt.subscribe("b", () => {}));
  const ws = welcomed(ctx);
  assert.deepEqual(ws.sentOf("subscribe").map((m) => m.topic), ["a", "b"]);
});

test("subscribe with since: a page's rendered position is resumed from, then the client's own", () => {
  const ctx = setup();
  const got = [];
  ctx.rt.subscribe("chat.lobby", (m) => got.push(m.offset), { since: { epoch: "e7", offset: 4 } });
  assert.deepEqual(ctx.rt.state().topics, { "chat.lobby": { epoch: "e7", offset: 4 } });
  const first = welcomed(ctx);
  assert.deepEqual(first.sentOf("subscribe"), [
    { type: "subscribe", topic: "chat.lobby", since: { epoch: "e7", offset: 4 } },
  ]);
  first.receive({ type: "subscribed", topic: "chat.lobby", epoch: "e7", offset: 4 });
  for (const offset of [4, 5, 6, 6]) {
    first.receive({ type: "message", topic: "chat.lobby", event: "message", data: "x", offset });
  }
  assert.deepEqual(got, [5, 6]);
  // A second handler's since does not move the position; nor does a reconnect go back to it.
  ctx.rt.subscribe("chat.lobby", () => {}, { since: { epoch: "e7", offset: 0 } });
  first.drop(1006);
  ctx.clock.advance(250);
  assert.deepEqual(welcomed(ctx).sentOf("subscribe"), [
    { type: "subscribe", topic: "chat.lobby", since: { epoch: "e7", offset: 6 } },
  ]);
  // Without an epoch it is no position: a plain subscribe.
  ctx.rt.subscribe("chat.other", () => {}, { since: { epoch: null, offset: 3 } });
  assert.deepEqual(ctx.ws().sentOf("subscribe").at(-1), { type: "subscribe", topic: "chat.other" });
});

test("subscribe with signed: the token goes in the first subscribe and in each after a reconnect", () => {
  const ctx = setup();
  ctx.rt.subscribe("orders.board", () => {}, { signed: "tok-1", since: { epoch: "e4", offset: 2 } });
  ctx.rt.subscribe("orders.board", () => {}, { signed: "tok-other" });
  ctx.rt.subscribe("chat.lobby", () => {});
  const first = welcomed(ctx);
  assert.deepEqual(first.sentOf("subscribe"), [
    { type: "subscribe", topic: "orders.board", since: { epoch: "e4", offset: 2 }, signed: "tok-1" },
    { type: "subscribe", topic: "chat.lobby" },
  ]);
  first.receive({ type: "subscribed", topic: "orders.board", epoch: "e4", offset: 2 });
  first.receive({ type: "message", topic: "orders.board", event: "html", data: {}, offset: 3 });
  first.drop(1006);
  ctx.clock.advance(1000);
  assert.deepEqual(welcomed(ctx).sentOf("subscribe")[0], {
    type: "subscribe", topic: "orders.board", since: { epoch: "e4", offset: 3 }, signed: "tok-1",
  });
  // Subscribed later (a region reloaded with a fresh token), while open: sent at once.
  ctx.rt.subscribe("orders.7", () => {}, { signed: "tok-7" });
  assert.deepEqual(ctx.ws().sentOf("subscribe").at(-1), { type: "subscribe", topic: "orders.7", signed: "tok-7" });
});

test("error stream_expired for a signed topic: onEnd(\"stream_expired\"), not re-sent on reconnect", () => {
  const ctx = setup();
  const ended = [];
  ctx.rt.subscribe("orders.board", () => {}, { signed: "old", onEnd: (reason) => ended.push(reason) });
  const first = welcomed(ctx);
  first.receive({ type: "error", code: "stream_expired", topic: "orders.board", detail: "re-render" });
  assert.deepEqual(ended, ["stream_expired"]);
  assert.deepEqual(ctx.events.unsubscribed, [{ topic: "orders.board", reason: "stream_expired", detail: "re-render" }]);
  first.drop(1006);
  ctx.clock.advance(1000);
  assert.deepEqual(welcomed(ctx).sentOf("subscribe"), []);
});

test("user topic: delivered to message listeners without subscribing, nothing sent", () => {
  const ctx = setup();
  const ws = welcomed(ctx);
  ws.receive({ type: "message", topic: "user", event: "message", data: "hi", offset: 4 });
  ws.receive({ type: "message", topic: "user", event: "message", data: "hi", offset: 4 });
  ws.receive({ type: "message", topic: "user", event: "message", data: "old", offset: 3 });
  assert.deepEqual(ctx.events.message.map((m) => m.data), ["hi"]);
  const mine = [];
  ctx.rt.subscribe("user", (m) => mine.push(m.offset));
  ws.receive({ type: "message", topic: "user", event: "message", data: "x", offset: 5 });
  assert.deepEqual(mine, [5]);
  assert.deepEqual(ws.sentOf("subscribe"), []);
});

test("user topic: anonymous sockets subscribe it plainly; another user resets it", () => {
  const ctx = setup();
  const resets = [];
  const mine = [];
  ctx.rt.subscribe("user", (m) => mine.push(m.data), { onReset: (info) => resets.push(info.reason) });
  const first = welcomed(ctx);
  assert.deepEqual(first.sentOf("subscribe"), []); // the server already did
  first.receive({ type: "message", topic: "user", event: "message", data: "for alice", offset: 4 });
  first.drop(1006);
  ctx.clock.advance(1000);
  const second = welcomed(ctx, { user: "bob", user_topic: { epoch: "e7", offset: 11 } });
  assert.ok(second.url.endsWith("?user=e2%3A4") || second.url.includes("user="), second.url);
  assert.deepEqual(resets, ["user_changed"]);
  assert.deepEqual(ctx.events.resume_failed.map((e) => [e.topic, e.reason]), [["user", "user_changed"]]);
  assert.deepEqual(second.sentOf("subscribe"), []);
  // The server answers alice's position in the URL for bob's topic: another epoch.
  second.receive({ type: "resume_failed", topic: "user", reason: "epoch_changed", epoch: "e7", offset: 11, detail: "d" });
  second.receive({ type: "subscribed", topic: "user", epoch: "e7", offset: 11 });
  assert.deepEqual(resets, ["user_changed", "epoch_changed"]);
  second.receive({ type: "message", topic: "user", event: "message", data: "for bob", offset: 12 });
  assert.deepEqual(mine, ["for alice", "for bob"]);
  second.drop(1006);
  ctx.clock.advance(1000);
  const third = welcomed(ctx, { user: null, user_topic: null });
  assert.deepEqual(third.sentOf("subscribe"), [{ type: "subscribe", topic: "user" }]);
  third.receive({ type: "error", code: "forbidden", topic: "user", detail: "sign in" });
  assert.deepEqual(ctx.events.unsubscribed.map((e) => [e.topic, e.reason]), [["user", "forbidden"]]);
  third.receive({ type: "message", topic: "user", event: "message", data: "stray", offset: 13 });
  assert.deepEqual(mine, ["for alice", "for bob"]);
  assert.equal(ctx.events.message.length, 2);
});

test("reconnect after 1006: backoff, then resume and subscribe with since at the right positions", () => {
  const ctx = setup();
  const orders = [];
  const mine = [];
  ctx.rt.subscribe("orders.42", (m) => orders.push(m.offset));
  ctx.rt.subscribe("fresh", () => {});
  ctx.rt.subscribe("user", (m) => mine.push(m.offset));
  const first = welcomed(ctx);
  assert.deepEqual(first.sentOf("subscribe").map((m) => m.topic), ["orders.42", "fresh"]);
  first.receive({ type: "subscribed", topic: "orders.42", epoch: "e3", offset: 6 });
  first.receive({ type: "message", topic: "orders.42", event: "message", data: 1, offset: 7 });
  first.receive({ type: "message", topic: "orders.42", event: "message", data: 2, offset: 8 });
  first.receive({ type: "subscribed", topic: "fresh", epoch: "e9", offset: 0 });
  first.receive({ type: "message", topic: "user", event: "message", data: "u", offset: 4 });
  first.receive({ type: "broadcast", id: 50, offset: 19, message: "b" });

  first.drop(1006);
  let s = ctx.rt.state();
  assert.equal(s.state, "closed");
  assert.equal(s.code, 1006);
  assert.equal(s.reconnectIn, 250); // 0.5 * 500
  assert.equal(ctx.events.state.at(-1).reconnectIn, 250);
  assert.equal(ctx.sockets.created.length, 1);
  ctx.clock.advance(249);
  assert.equal(ctx.sockets.created.length, 1);
  ctx.clock.advance(1);
  assert.equal(ctx.sockets.created.length, 2);
  assert.equal(ctx.rt.state().state, "connecting");
  assert.deepEqual(ctx.events.state.map((e) => e.state), ["open", "closed", "connecting"]);

  // a second failure before opening: the next delay doubles
  ctx.ws().drop(1006);
  assert.equal(ctx.rt.state().reconnectIn, 500);
  ctx.clock.advance(500);
  assert.equal(ctx.sockets.created.length, 3);

  const second = welcomed(ctx, { broadcasts: { epoch: "e1", offset: 30 }, user_topic: { epoch: "e2", offset: 9 } });
  // The broadcasts and the user's own topic resume in the URL: replayed before anything live.
  assert.ok(second.url.endsWith("/ws/?broadcasts=e1%3A19&user=e2%3A4"), second.url);
  assert.deepEqual(second.sentOf("resume"), []);
  assert.deepEqual(second.sentOf("subscribe"), [
    { type: "subscribe", topic: "orders.42", since: { epoch: "e3", offset: 8 } },
    { type: "subscribe", topic: "fresh", since: { epoch: "e9", offset: 0 } },
  ]);

  // user messages from the server's own subscription wait for the replay after `subscribed`
  second.receive({ type: "message", topic: "user", event: "message", data: "live", offset: 10 });
  second.receive({ type: "subscribed", topic: "user", epoch: "e2", offset: 4 });
  for (const offset of [5, 6, 7, 8, 9, 10]) {
    second.receive({ type: "message", topic: "user", event: "message", data: "r", offset });
  }
  assert.deepEqual(mine, [4, 5, 6, 7, 8, 9, 10]);

  second.receive({ type: "subscribed", topic: "orders.42", epoch: "e3", offset: 8 });
  second.receive({ type: "message", topic: "orders.42", event: "message", data: 2, offset: 8 });
  second.receive({ type: "message", topic: "orders.42", event: "message", data: 3, offset: 9 });
  assert.deepEqual(orders, [7, 8, 9]);

  second.receive({ type: "broadcast", id: 50, offset: 19, message: "b" });
  second.receive({ type: "broadcast", id: 51, offset: 20, message: "c" });
  second.receive({ type: "resumed", epoch: "e1", offset: 30, replayed: 1 });
  assert.deepEqual(ctx.events.broadcast.map((b) => b.id), [50, 51]);
  assert.deepEqual(ctx.rt.state().broadcasts, { epoch: "e1", offset: 30 });
});

test("backoff attempts reset after 10 s open", () => {
  const ctx = setup({ random: () => 0.999 });
  welcomed(ctx);
  ctx.ws().drop(1006);
  assert.equal(ctx.rt.state().reconnectIn, 499);
  ctx.clock.advance(499);
  ctx.ws().open();
  ctx.ws().drop(1006); // unstable: attempt keeps growing
  assert.equal(ctx.rt.state().reconnectIn, 999);
  ctx.clock.advance(999);
  welcomed(ctx);
  ctx.clock.advance(10000);
  ctx.ws().drop(1001);
  assert.equal(ctx.rt.state().reconnectIn, 499);
});

test("the user topic without a subscription restarts from each welcome", () => {
  const ctx = setup();
  const first = welcomed(ctx);
  first.receive({ type: "message", topic: "user", event: "message", data: "a", offset: 4 });
  first.drop(1006);
  ctx.clock.advance(1000);
  const second = welcomed(ctx, { user_topic: { epoch: "e2", offset: 8 } });
  assert.deepEqual(second.sentOf("subscribe"), []);
  second.receive({ type: "message", topic: "user", event: "message", data: "b", offset: 8 });
  second.receive({ type: "message", topic: "user", event: "message", data: "c", offset: 9 });
  assert.deepEqual(ctx.events.message.map((m) => m.data), ["a", "c"]);
});

test("resume_failed: onReset and resume_failed listeners, for a topic and for broadcasts", () => {
  const ctx = setup({ broadcasts: { epoch: "e0", offset: 2 } });
  const resets = [];
  const got = [];
  ctx.rt.subscribe("orders.42", (m) => got.push(m.offset), { onReset: (info) => resets.push(info) });
  const first = welcomed(ctx);
  first.receive({ type: "resume_failed", reason: "epoch_changed", epoch: "e1", offset: 17, detail: "d" });
  assert.deepEqual(ctx.events.resume_failed[0], { topic: null, reason: "epoch_changed", epoch: "e1", offset: 17, detail: "d" });
  assert.deepEqual(ctx.rt.state().broadcasts, { epoch: "e1", offset: 17 });
  assert.deepEqual(resets, []);
  first.receive({ type: "subscribed", topic: "orders.42", epoch: "e3", offset: 6 });
  first.receive({ type: "message", topic: "orders.42", event: "message", data: 1, offset: 7 });
  first.drop(1006);
  ctx.clock.advance(1000);
  const second = welcomed(ctx);
  assert.deepEqual(second.sentOf("subscribe")[0].since, { epoch: "e3", offset: 7 });
  const failed = { type: "resume_failed", topic: "orders.42", reason: "too_old", epoch: "e3", offset: 40, detail: "x" };
  second.receive(failed);
  assert.equal(resets.length, 1);
  assert.equal(resets[0].topic, "orders.42");
  assert.equal(resets[0].reason, "too_old");
  assert.equal(ctx.events.resume_failed.length, 2);
  assert.equal(ctx.events.resume_failed[1].topic, "orders.42");
  second.receive({ type: "subscribed", topic: "orders.42", epoch: "e3", offset: 40 });
  second.receive({ type: "message", topic: "orders.42", event: "message", data: 2, offset: 40 });
  second.receive({ type: "message", topic: "orders.42", event: "message", data: 3, offset: 41 });
  assert.deepEqual(got, [7, 41]);
});

test("error forbidden for a topic: removed, onEnd, not re-sent on reconnect", () => {
  const ctx = setup();
  const ended = [];
  const got = [];
  ctx.rt.subscribe("secret", (m) => got.push(m), { onEnd: (reason) => ended.push(reason) });
  ctx.rt.subscribe("orders.42", () => {});
  const first = welcomed(ctx);
  first.receive({ type: "error", code: "forbidden", topic: "secret", detail: "no" });
  assert.deepEqual(ended, ["forbidden"]);
  assert.deepEqual(ctx.events.unsubscribed, [{ topic: "secret", reason: "forbidden", detail: "no" }]);
  assert.deepEqual(ctx.events.error, []);
  first.receive({ type: "message", topic: "secret", event: "message", data: 1, offset: 1 });
  assert.deepEqual(got, []);
  first.receive({ type: "error", code: "rate_limited", detail: "slow down" });
  assert.deepEqual(ctx.events.error, [{ type: "error", code: "rate_limited", detail: "slow down" }]);
  first.drop(1006);
  ctx.clock.advance(1000);
  const second = welcomed(ctx);
  assert.deepEqual(second.sentOf("subscribe").map((m) => m.topic), ["orders.42"]);
});

test("a subscribe refused for the replay budget is sent again after retry_after, same since", () => {
  const ctx = setup();
  const ended = [];
  ctx.rt.subscribe("orders.42", () => {}, { onEnd: (reason) => ended.push(reason) });
  const first = welcomed(ctx);
  first.receive({ type: "subscribed", topic: "orders.42", epoch: "e3", offset: 6 });
  first.receive({ type: "message", topic: "orders.42", event: "message", data: 1, offset: 7 });
  first.drop(1006);
  ctx.clock.advance(1000);
  const second = welcomed(ctx);
  assert.equal(second.sentOf("subscribe").length, 1);
  second.receive({ type: "error", code: "rate_limited", topic: "orders.42", detail: "later", retry_after: 2 });
  assert.deepEqual(ended, []);
  ctx.clock.advance(1999);
  assert.equal(second.sentOf("subscribe").length, 1);
  ctx.clock.advance(1);
  const again = second.sentOf("subscribe");
  assert.equal(again.length, 2);
  assert.deepEqual(again[1].since, { epoch: "e3", offset: 7 });
  assert.equal(ctx.events.error.length, 1);
});

test("unsubscribed forbidden: removed, onEnd, unsubscribed event, not re-sent; requested is only an answer", () => {
  const ctx = setup();
  const ended = [];
  ctx.rt.subscribe("orders.42", () => {}, { onEnd: (reason) => ended.push(reason) });
  ctx.rt.subscribe("orders.43", () => {});
  const first = welcomed(ctx);
  first.receive({ type: "subscribed", topic: "orders.42", epoch: "e3", offset: 0 });
  first.receive({ type: "unsubscribed", topic: "orders.43", reason: "requested" });
  first.receive({ type: "unsubscribed", topic: "orders.42", reason: "forbidden" });
  assert.deepEqual(ended, ["forbidden"]);
  assert.deepEqual(ctx.events.unsubscribed.map((e) => [e.topic, e.reason]), [["orders.42", "forbidden"]]);
  assert.deepEqual(Object.keys(ctx.rt.state().topics), ["orders.43"]);
  first.drop(1006);
  ctx.clock.advance(1000);
  const second = welcomed(ctx);
  assert.deepEqual(second.sentOf("subscribe").map((m) => m.topic), ["orders.43"]);
});

test("close code 1008 stops reconnecting", () => {
  const ctx = setup();
  welcomed(ctx);
  ctx.ws().drop(1008, "policy");
  const s = ctx.rt.state();
  assert.equal(s.state, "closed");
  assert.equal(s.code, 1008);
  assert.equal(s.reason, "policy");
  assert.equal(s.reconnectIn, null);
  assert.equal(ctx.clock.pending().length, 0);
  ctx.clock.advance(120000);
  assert.equal(ctx.sockets.created.length, 1);
  assert.equal(ctx.rt.send({ type: "ping" }), false);
});

test("status live false -> paused, live true -> open", () => {
  const ctx = setup();
  const ws = welcomed(ctx);
  ws.receive({ type: "status", live: false, reason: "layer down" });
  assert.equal(ctx.rt.state().state, "paused");
  ws.receive({ type: "status", live: false });
  ws.receive({ type: "status", live: true });
  assert.equal(ctx.rt.state().state, "open");
  assert.deepEqual(ctx.events.state.map((s) => s.state), ["open", "paused", "open"]);
});

test("presence list kept through presence, join and leave", () => {
  const ctx = setup();
  ctx.rt.subscribe("room.1", () => {});
  const ws = welcomed(ctx);
  const alice = { id: 1, username: "alice" };
  const bob = { id: 2, username: "bob" };
  ws.receive({ type: "subscribed", topic: "room.1", epoch: "e5", offset: 0 });
  ws.receive({ type: "presence", topic: "room.1", users: [alice] });
  ws.receive({ type: "join", topic: "room.1", user: bob });
  ws.receive({ type: "join", topic: "room.1", user: bob });
  ws.receive({ type: "leave", topic: "room.1", user: alice });
  assert.deepEqual(ctx.events.presence, [
    { kind: "presence", topic: "room.1", users: [alice] },
    { kind: "join", topic: "room.1", users: [alice, bob], user: bob },
    { kind: "join", topic: "room.1", users: [alice, bob], user: bob },
    { kind: "leave", topic: "room.1", users: [bob], user: alice },
  ]);
});

test("keep-alive ping every third of idle_timeout, stopped on close", () => {
  const ctx = setup();
  const ws = welcomed(ctx, { idle_timeout: 30 });
  ctx.clock.advance(9999);
  assert.deepEqual(ws.sentOf("ping"), []);
  ctx.clock.advance(1);
  assert.deepEqual(ws.sentOf("ping"), [{ type: "ping" }]);
  ctx.clock.advance(20000);
  assert.equal(ws.sentOf("ping").length, 3);
  ws.receive({ type: "pong" });
  ws.drop(1006);
  ctx.clock.advance(60000);
  assert.equal(ws.sentOf("ping").length, 3);
});

test("the unsubscribe function sends unsubscribe and stops callbacks", () => {
  const ctx = setup();
  const a = [];
  const b = [];
  const offA = ctx.rt.subscribe("orders.42", (m) => a.push(m.offset));
  const offB = ctx.rt.subscribe("orders.42", (m) => b.push(m.offset));
  const ws = welcomed(ctx);
  assert.equal(ws.sentOf("subscribe").length, 1);
  ws.receive({ type: "subscribed", topic: "orders.42", epoch: "e3", offset: 0 });
  ws.receive({ type: "message", topic: "orders.42", event: "message", data: 1, offset: 1 });
  offA();
  assert.deepEqual(ws.sentOf("unsubscribe"), []);
  ws.receive({ type: "message", topic: "orders.42", event: "message", data: 2, offset: 2 });
  offB();
  offB();
  assert.deepEqual(ws.sentOf("unsubscribe"), [{ type: "unsubscribe", topic: "orders.42" }]);
  ws.receive({ type: "message", topic: "orders.42", event: "message", data: 3, offset: 3 });
  assert.deepEqual(a, [1]);
  assert.deepEqual(b, [1, 2]);
  assert.deepEqual(ctx.rt.state().topics, {});
  ws.drop(1006);
  ctx.clock.advance(1000);
  assert.deepEqual(welcomed(ctx).sentOf("subscribe"), []);
});

test("on() returns a remover; a throwing listener does not stop the others", () => {
  const ctx = setup();
  const seen = [];
  const off = ctx.rt.on("broadcast", (b) => seen.push(b.id));
  const origError = console.error;
  console.error = () => {};
  try {
    ctx.rt.on("broadcast", () => {
      throw new Error("listener bug");
    });
    const ws = welcomed(ctx);
    ws.receive({ type: "broadcast", id: 1, offset: 18 });
    off();
    ws.receive({ type: "broadcast", id: 2, offset: 19 });
    ws.onmessage({ data: "not json" });
    ws.onmessage({ data: new ArrayBuffer(2) });
  } finally {
    console.error = origError;
  }
  assert.deepEqual(seen, [1]);
  assert.deepEqual(ctx.events.broadcast.map((b) => b.id), [1, 2]);
});

test("rt.close() closes the socket and stops reconnects", () => {
  const ctx = setup();
  const ws = welcomed(ctx);
  ctx.rt.close();
  assert.equal(ws.closedWith.code, 1000);
  assert.equal(ctx.rt.state().state, "closed");
  assert.equal(ctx.rt.state().reconnectIn, null);
  ws.drop(1000); // the close event arrives later: ignored
  ctx.clock.advance(120000);
  assert.equal(ctx.sockets.created.length, 1);
  assert.equal(ctx.clock.pending().length, 0);

  // also during a reconnect wait
  const waiting = setup();
  welcomed(waiting).drop(1006);
  assert.equal(waiting.clock.pending().length, 1);
  waiting.rt.close();
  waiting.clock.advance(120000);
  assert.equal(waiting.sockets.created.length, 1);
  assert.equal(waiting.rt.state().state, "closed");
});

test("connect({user}) resumes the user's own topic from a page's position, in the first URL", () => {
  const ctx = setup({ user: { epoch: "e2", offset: 5 } });
  const got = [];
  ctx.rt.subscribe("user", (m) => got.push(m.offset));
  const first = welcomed(ctx, { user_topic: { epoch: "e2", offset: 7 } });
  assert.ok(first.url.endsWith("/ws/?user=e2%3A5"), first.url);
  assert.deepEqual(first.sentOf("subscribe"), []); // the URL asked for it
  first.receive({ type: "subscribed", topic: "user", epoch: "e2", offset: 5 });
  for (const offset of [6, 7, 7]) {
    first.receive({ type: "message", topic: "user", event: "notification", data: {}, offset });
  }
  assert.deepEqual(got, [6, 7]);
});

// ---------------------------------------------------------------- protocol versions

// The state of a promise, without waiting for it: "pending", or ["resolved", value] /
// ["rejected", error], once the microtasks that settle it ran.
async function settled(promise) {
  const pending = {};
  const outcome = await Promise.race([
    promise.then((value) => ["resolved", value], (err) => ["rejected", err]),
    new Promise((resolve) => setImmediate(() => resolve(pending))),
  ]);
  return outcome === pending ? "pending" : outcome;
}

test("the socket offers the subprotocol realtime.v3", () => {
  const ctx = setup();
  assert.deepEqual(ctx.ws().protocols, ["realtime.v3"]);
});

test("reload then close 4010: onReload once, reload event, no reconnect, pending work rejected", async () => {
  const reloads = [];
  const ctx = setup({ onReload: (info) => reloads.push(info) });
  const ws = welcomed(ctx);
  const pending = ctx.rt.publish("chat.lobby", "hi");
  ws.receive({ type: "reload", reason: "protocol", detail: "Reload the page." });
  ws.drop(4010, "Reload: protocol version not served");
  assert.deepEqual(reloads, [{ reason: "protocol", detail: "Reload the page." }]);
  assert.equal(ctx.events.reload.length, 1);
  assert.equal(ctx.rt.state().state, "closed");
  assert.equal(ctx.rt.state().reconnectIn, null);
  ctx.clock.advance(120000);
  assert.equal(ctx.sockets.created.length, 1);
  const [kind, err] = await settled(pending);
  assert.equal(kind, "rejected");
  assert.equal(err.code, "closed");
  await assert.rejects(ctx.rt.publish("chat.lobby", "later"), { code: "closed" });
});

test("close 4010 alone also calls onReload, and the default reloads the location", () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "location");
  let reloaded = 0;
  Object.defineProperty(globalThis, "location", {
    value: { protocol: "https:", host: "example.test", reload: () => reloaded++ },
    configurable: true,
  });
  try {
    const ctx = setup();
    ctx.ws().open();
    ctx.ws().drop(4010, "");
    assert.equal(reloaded, 1);
    ctx.clock.advance(60000);
    assert.equal(ctx.sockets.created.length, 1);
  } finally {
    if (saved) {
      Object.defineProperty(globalThis, "location", saved);
    } else {
      delete globalThis.location;
    }
  }
});

// ---------------------------------------------------------------- publish

test("publish: sent with a client id once open; published resolves its offset", async () => {
  const ctx = setup();
  const early = ctx.rt.publish("chat.lobby", { text: "before open" }, { event: "chat" });
  assert.deepEqual(ctx.ws().sent, []);
  const ws = welcomed(ctx);
  assert.deepEqual(ws.sentOf("publish"), [
    { type: "publish", topic: "chat.lobby", data: { text: "before open" }, event: "chat", id: "id-1" },
  ]);
  const later = ctx.rt.publish("chat.lobby", "x");
  assert.equal(ws.sentOf("publish")[1].id, "id-2");
  ws.receive({ type: "published", topic: "chat.lobby", id: "id-2", offset: 8 });
  ws.receive({ type: "published", topic: "chat.lobby", id: "id-1", offset: 7 });
  assert.deepEqual(await settled(early), ["resolved", 7]);
  assert.deepEqual(await settled(later), ["resolved", 8]);
});

test("a publish unanswered when the socket drops is sent again with the same id after the subscribes", async () => {
  const ctx = setup();
  ctx.rt.subscribe("chat.lobby", () => {});
  const first = welcomed(ctx);
  first.receive({ type: "subscribed", topic: "chat.lobby", epoch: "e5", offset: 3 });
  const sent = ctx.rt.publish("chat.lobby", { text: "hello" });
  const done = ctx.rt.publish("chat.lobby", { text: "acknowledged" });
  first.receive({ type: "published", topic: "chat.lobby", id: "id-2", offset: 4 });
  first.drop(1006);
  assert.equal(await settled(sent), "pending");
  ctx.clock.advance(250);
  const second = welcomed(ctx);
  // In order: the subscribe (with its position), then the publish, same id, same data.
  assert.deepEqual(second.sent.map((m) => m.type), ["subscribe", "publish"]);
  assert.deepEqual(second.sentOf("publish"), [
    { type: "publish", topic: "chat.lobby", data: { text: "hello" }, id: "id-1" },
  ]);
  second.receive({ type: "published", topic: "chat.lobby", id: "id-1", offset: 5 });
  assert.deepEqual(await settled(sent), ["resolved", 5]);
  assert.deepEqual(await settled(done), ["resolved", 4]);
  // Answered: not sent a third time.
  second.drop(1006);
  ctx.clock.advance(500);
  assert.deepEqual(welcomed(ctx).sentOf("publish"), []);
});

test("a publish refused rejects with the server's code; the topic's subscription stays", async () => {
  const ctx = setup();
  const got = [];
  ctx.rt.subscribe("chat.lobby", (m) => got.push(m.data));
  const ws = welcomed(ctx);
  ws.receive({ type: "subscribed", topic: "chat.lobby", epoch: "e5", offset: 3 });
  const refused = ctx.rt.publish("chat.lobby", "spam");
  ws.receive({ type: "error", code: "rejected", topic: "chat.lobby", id: "id-1", detail: "No links." });
  const [kind, err] = await settled(refused);
  assert.equal(kind, "rejected");
  assert.ok(err instanceof Error);
  assert.equal(err.code, "rejected");
  assert.equal(err.detail, "No links.");
  assert.deepEqual(ctx.events.unsubscribed, []);
  assert.deepEqual(ctx.events.error, []);
  ws.receive({ type: "message", topic: "chat.lobby", event: "message", data: "still", offset: 4 });
  assert.deepEqual(got, ["still"]);
});

test("ephemeral: resolves null; one pending at a drop is rejected, not sent again", async () => {
  const ctx = setup();
  const first = welcomed(ctx);
  const typing = ctx.rt.publish("chat.lobby", { typing: true }, { ephemeral: true });
  assert.equal(first.sentOf("publish")[0].ephemeral, true);
  first.receive({ type: "published", topic: "chat.lobby", id: "id-1", offset: null });
  assert.deepEqual(await settled(typing), ["resolved", null]);
  const stale = ctx.rt.publish("chat.lobby", { typing: false }, { ephemeral: true });
  first.drop(1006);
  const [kind, err] = await settled(stale);
  assert.equal(kind, "rejected");
  assert.equal(err.code, "disconnected");
  ctx.clock.advance(250);
  assert.deepEqual(welcomed(ctx).sentOf("publish"), []);
});

// ---------------------------------------------------------------- call

test("call: the reply's data resolves; a reply error rejects with its code", async () => {
  const ctx = setup();
  const ws = welcomed(ctx);
  const timers = ctx.clock.pending().length;
  const added = ctx.rt.call("cart.add", { sku: 7 });
  const missing = ctx.rt.call("nope", null);
  const [first, second] = ws.sentOf("call");
  assert.deepEqual(first, { type: "call", name: "cart.add", data: { sku: 7 }, ref: first.ref });
  assert.notEqual(first.ref, second.ref);
  ws.receive({ type: "reply", ref: second.ref, error: { code: "not_found", detail: "No such call." } });
  ws.receive({ type: "reply", ref: first.ref, data: { items: 3 } });
  assert.deepEqual(await settled(added), ["resolved", { items: 3 }]);
  const [kind, err] = await settled(missing);
  assert.equal(kind, "rejected");
  assert.equal(err.code, "not_found");
  assert.equal(err.detail, "No such call.");
  assert.equal(ctx.clock.pending().length, timers, "their timeouts cleared");
});

test("call: no reply within the timeout rejects with timeout (default 10 s); a late reply is ignored", async () => {
  const ctx = setup();
  const ws = welcomed(ctx);
  const slow = ctx.rt.call("report.build", {}, { timeout: 2000 });
  const usual = ctx.rt.call("report.other", {});
  ctx.clock.advance(1999);
  assert.equal(await settled(slow), "pending");
  ctx.clock.advance(1);
  const [kind, err] = await settled(slow);
  assert.equal(kind, "rejected");
  assert.equal(err.code, "timeout");
  ws.receive({ type: "reply", ref: ws.sentOf("call")[0].ref, data: "late" });
  ctx.clock.advance(7999);
  assert.equal(await settled(usual), "pending");
  ctx.clock.advance(1);
  assert.equal((await settled(usual))[1].code, "timeout");
});

test("call: a call pending when the socket drops is rejected (disconnected), never sent again", async () => {
  const ctx = setup();
  const first = welcomed(ctx);
  const pending = ctx.rt.call("cart.add", { sku: 7 });
  assert.equal(first.sentOf("call").length, 1);
  first.drop(1006);
  const [kind, err] = await settled(pending);
  assert.equal(kind, "rejected");
  assert.equal(err.code, "disconnected");
  // A call made while reconnecting was never sent: it goes on the next socket.
  const queued = ctx.rt.call("cart.view", null);
  ctx.clock.advance(250);
  const second = welcomed(ctx);
  assert.deepEqual(second.sentOf("call").map((m) => m.name), ["cart.view"]);
  second.receive({ type: "reply", ref: second.sentOf("call")[0].ref, data: [] });
  assert.deepEqual(await settled(queued), ["resolved", []]);
});

test("rt.close() rejects pending publishes and calls with closed", async () => {
  const ctx = setup();
  welcomed(ctx);
  const p = ctx.rt.publish("chat.lobby", "x");
  const c = ctx.rt.call("cart.add", {});
  ctx.rt.close();
  assert.equal((await settled(p))[1].code, "closed");
  assert.equal((await settled(c))[1].code, "closed");
  await assert.rejects(ctx.rt.call("cart.add", {}), { code: "closed" });
});

// ---------------------------------------------------------------- presence metadata

test("setPresence sends presence_update, and the latest meta again after each resubscribe", () => {
  const ctx = setup();
  ctx.rt.subscribe("chat.lobby", () => {});
  ctx.rt.setPresence("chat.lobby", { typing: true }); // not open yet: kept
  const first = welcomed(ctx);
  assert.deepEqual(first.sentOf("presence_update"), []); // waits for `subscribed`
  first.receive({ type: "subscribed", topic: "chat.lobby", epoch: "e5", offset: 0 });
  assert.deepEqual(first.sentOf("presence_update"), [
    { type: "presence_update", topic: "chat.lobby", meta: { typing: true } },
  ]);
  ctx.rt.setPresence("chat.lobby", { typing: false });
  assert.deepEqual(first.sentOf("presence_update")[1].meta, { typing: false });
  first.drop(1006);
  ctx.clock.advance(250);
  const second = welcomed(ctx);
  assert.deepEqual(second.sentOf("presence_update"), []);
  second.receive({ type: "subscribed", topic: "chat.lobby", epoch: "e5", offset: 0 });
  assert.deepEqual(second.sentOf("presence_update"), [
    { type: "presence_update", topic: "chat.lobby", meta: { typing: false } },
  ]);
  assert.throws(() => ctx.rt.setPresence("chat.lobby", "not an object"), TypeError);
});

test("presence update replaces a user's entry (with its meta) in the list", () => {
  const ctx = setup();
  ctx.rt.subscribe("chat.lobby", () => {});
  const ws = welcomed(ctx);
  const alice = { id: 1, username: "alice", meta: {} };
  ws.receive({ type: "presence", topic: "chat.lobby", users: [alice, { id: 2, username: "bob", meta: {} }] });
  ws.receive({ type: "update", topic: "chat.lobby", user: { id: 1, username: "alice", meta: { typing: true } } });
  const last = ctx.events.presence.at(-1);
  assert.equal(last.kind, "update");
  assert.deepEqual(last.users.map((u) => u.meta), [{ typing: true }, {}]);
  assert.deepEqual(last.user.meta, { typing: true });
});

test("a refused presence update or publish ends no subscription", async () => {
  const ctx = setup();
  const seen = [];
  ctx.rt.subscribe("chat.lobby", (m) => seen.push(m));
  const ws = welcomed(ctx);
  ws.receive({ type: "subscribed", topic: "chat.lobby", epoch: "e5", offset: 0 });
  ws.receive({ type: "error", code: "too_large", topic: "chat.lobby", request: "presence_update", detail: "big" });
  ws.receive({ type: "error", code: "rejected", topic: "chat.lobby", id: "gone", request: "publish", detail: "no" });
  ws.receive({ type: "message", topic: "chat.lobby", event: "message", data: "still here", offset: 1 });
  assert.deepEqual(seen.map((m) => m.data), ["still here"]);
  assert.deepEqual(ctx.events.error.map((m) => m.code), ["too_large", "rejected"]);
});

// ---------------------------------------------------------------- the welcome's limits

const LIMITS = { max_message: 200, rate: 10, burst: 4, publish_id_ttl: 60 };

test("a message larger than limits.max_message (UTF-8 bytes) is refused locally, never sent", async () => {
  const ctx = setup();
  ctx.rt.subscribe("chat.lobby", () => {});
  const ws = welcomed(ctx, { limits: LIMITS });
  ws.receive({ type: "subscribed", topic: "chat.lobby", epoch: "e5", offset: 0 });
  const sent = ws.sent.length;
  // 90 characters, but 180 bytes of UTF-8 and the envelope: over 200 bytes.
  const big = "é".repeat(90);
  const refused = ctx.rt.publish("chat.lobby", { text: big });
  const [kind, err] = await settled(refused);
  assert.equal(kind, "rejected");
  assert.equal(err.code, "too_large");
  assert.equal(err.id, "id-1");
  assert.equal((await settled(ctx.rt.call("cart.add", big)))[1].code, "too_large");
  assert.throws(() => ctx.rt.setPresence("chat.lobby", { status: big }), { code: "too_large" });
  assert.equal(ctx.rt.send({ type: "ping", padding: big }), false);
  assert.equal(ws.sent.length, sent, "nothing sent");
  // "e" is one byte: 90 of them fit.
  const fits = ctx.rt.publish("chat.lobby", { text: "e".repeat(90) });
  assert.equal(ws.sentOf("publish").length, 1);
  // Between sockets the last limits hold; a new server with a smaller limit refuses at its welcome.
  ws.drop(1006);
  assert.equal((await settled(ctx.rt.publish("chat.lobby", big)))[1].code, "too_large");
  ctx.clock.advance(250);
  welcomed(ctx, { limits: Object.assign({}, LIMITS, { max_message: 100 }) });
  assert.equal(ctx.ws().sentOf("publish").length, 0);
  assert.equal((await settled(fits))[1].code, "too_large"); // too large for the new server
  assert.equal(ctx.rt.state().state, "open");
});

test("close 1009: an unanswered publish whose size was not checked is rejected too_large, not sent again", async () => {
  const ctx = setup();
  const first = welcomed(ctx); // a welcome without limits: sizes unknown
  const unchecked = ctx.rt.publish("chat.lobby", "x".repeat(100000));
  first.drop(1009, "Message too big");
  const [kind, err] = await settled(unchecked);
  assert.equal(kind, "rejected");
  assert.equal(err.code, "too_large");
  assert.equal(err.id, "id-1");
  ctx.clock.advance(250);
  const second = welcomed(ctx, { limits: LIMITS });
  assert.deepEqual(second.sentOf("publish"), []);
  // One checked against max_message was not the culprit: it is sent again.
  const checked = ctx.rt.publish("chat.lobby", "small");
  second.drop(1009);
  ctx.clock.advance(500);
  const third = welcomed(ctx, { limits: LIMITS });
  assert.deepEqual(third.sentOf("publish").map((m) => m.id), ["id-2"]);
  assert.equal(await settled(checked), "pending");
});

test("what is sent is paced by limits.rate with half of limits.burst at once, subscribes first, pings too", async () => {
  const ctx = setup();
  for (const topic of ["a", "b", "c"]) {
    ctx.rt.subscribe(topic, () => {});
  }
  const first = welcomed(ctx);
  const pending = [1, 2, 3, 4, 5].map((n) => ctx.rt.publish("a", n));
  first.drop(1006);
  ctx.clock.advance(250);
  // rate 10 a second, burst 4: 2 at once, then one every 100 ms.
  const ws = welcomed(ctx, { limits: LIMITS, idle_timeout: 3 });
  const types = () => ws.sent.map((m) => m.type);
  assert.deepEqual(types(), ["subscribe", "subscribe"]);
  ctx.clock.advance(99);
  assert.equal(ws.sent.length, 2);
  ctx.clock.advance(1);
  assert.deepEqual(types(), ["subscribe", "subscribe", "subscribe"]);
  ctx.clock.advance(500);
  assert.deepEqual(types(), ["subscribe", "subscribe", "subscribe", "publish", "publish", "publish", "publish", "publish"]);
  assert.deepEqual(ws.sentOf("publish").map((m) => m.data), [1, 2, 3, 4, 5]);
  // A ping spends the same budget: the keep-alive's (every 1 s) and then rt.send's wait their turn.
  ctx.clock.advance(400); // t = 1 s after the welcome: the keep-alive ping, 2 tokens by now
  assert.equal(ws.sentOf("ping").length, 1);
  ctx.rt.send({ type: "ping" });
  ctx.rt.send({ type: "ping" });
  assert.equal(ws.sentOf("ping").length, 2);
  ctx.clock.advance(100);
  assert.equal(ws.sentOf("ping").length, 3);
  assert.equal(pending.length, 5);
  // rate 0: no limit.
  ws.drop(1006);
  ctx.clock.advance(1000);
  const unpaced = welcomed(ctx, { limits: Object.assign({}, LIMITS, { rate: 0 }) });
  assert.equal(unpaced.sentOf("subscribe").length, 3);
  assert.equal(unpaced.sentOf("publish").length, 5);
});

test("unavailable, timeout, rate_limited: the publish is sent again with its id after 1 s, 2 s, 4 s ...", async () => {
  const ctx = setup();
  const ws = welcomed(ctx, { limits: Object.assign({}, LIMITS, { rate: 0 }) });
  const pending = ctx.rt.publish("chat.lobby", "hi");
  const error = (code) => ({ type: "error", code, topic: "chat.lobby", id: "id-1", request: "publish", detail: "" });
  for (const [code, wait] of [["unavailable", 1000], ["timeout", 2000], ["rate_limited", 4000]]) {
    const before = ws.sentOf("publish").length;
    ws.receive(error(code));
    assert.equal(await settled(pending), "pending", code);
    ctx.clock.advance(wait - 1);
    assert.equal(ws.sentOf("publish").length, before, code);
    ctx.clock.advance(1);
    assert.equal(ws.sentOf("publish").length, before + 1, code);
  }
  assert.deepEqual(new Set(ws.sentOf("publish").map((m) => m.id)), new Set(["id-1"]));
  assert.deepEqual(ctx.events.error, []);
  ws.receive({ type: "published", topic: "chat.lobby", id: "id-1", offset: 9 });
  assert.deepEqual(await settled(pending), ["resolved", 9]);
  // Waiting for its retry when the socket drops: sent when the timer fires on the next socket.
  const later = ctx.rt.publish("chat.lobby", "again");
  ws.receive(Object.assign(error("unavailable"), { id: "id-2" }));
  ws.drop(1006);
  ctx.clock.advance(250);
  const next = welcomed(ctx, { limits: Object.assign({}, LIMITS, { rate: 0 }) });
  assert.deepEqual(next.sentOf("publish"), []);
  ctx.clock.advance(750);
  assert.deepEqual(next.sentOf("publish").map((m) => m.id), ["id-2"]);
  assert.equal(await settled(later), "pending");
  // An ephemeral one is not retried; another code rejects with the publish's id.
  const typing = ctx.rt.publish("chat.lobby", {}, { ephemeral: true });
  next.receive(Object.assign(error("rate_limited"), { id: "id-3" }));
  assert.equal((await settled(typing))[1].code, "rate_limited");
  next.receive(Object.assign(error("forbidden"), { id: "id-2" }));
  const [kind, err] = await settled(later);
  assert.equal(kind, "rejected");
  assert.equal(err.code, "forbidden");
  assert.equal(err.id, "id-2");
});

test("a publish unanswered for longer than limits.publish_id_ttl since first sent is rejected expired, not sent again", async () => {
  const ctx = setup();
  const limits = Object.assign({}, LIMITS, { rate: 0 });
  const first = welcomed(ctx, { limits });
  const old = ctx.rt.publish("chat.lobby", "old");
  ctx.clock.advance(30000);
  const young = ctx.rt.publish("chat.lobby", "young");
  first.drop(1006);
  ctx.clock.advance(30000); // old: 60 s since first sent, young: 30 s
  const second = welcomed(ctx, { limits });
  const [kind, err] = await settled(old);
  assert.equal(kind, "rejected");
  assert.equal(err.code, "expired");
  assert.equal(err.id, "id-1");
  assert.deepEqual(second.sentOf("publish").map((m) => m.id), ["id-2"]);
  // Nor after a wait (retry_after here) that takes it past the TTL.
  const limited = { type: "error", code: "rate_limited", topic: "chat.lobby", id: "id-2", request: "publish" };
  second.receive(Object.assign(limited, { retry_after: 40 }));
  ctx.clock.advance(39999);
  assert.equal(await settled(young), "pending");
  ctx.clock.advance(1); // 70 s since first sent
  assert.equal((await settled(young))[1].code, "expired");
  assert.equal(second.sentOf("publish").length, 1);
});

test("an anonymous socket's publish unanswered when it drops is rejected disconnected; one never sent goes on the next", async () => {
  const ctx = setup();
  const first = welcomed(ctx, { user: null, user_topic: null, limits: LIMITS });
  const sent = ctx.rt.publish("chat.lobby", "sent");
  first.drop(1006);
  const [kind, err] = await settled(sent);
  assert.equal(kind, "rejected");
  assert.equal(err.code, "disconnected");
  assert.equal(err.id, "id-1");
  const queued = ctx.rt.publish("chat.lobby", "queued while disconnected");
  ctx.clock.advance(250);
  const second = welcomed(ctx, { user: null, user_topic: null, limits: LIMITS });
  assert.deepEqual(second.sentOf("publish").map((m) => m.id), ["id-2"]);
  second.receive({ type: "published", topic: "chat.lobby", id: "id-2", offset: 3 });
  assert.deepEqual(await settled(queued), ["resolved", 3]);
});

test("onReload at most once per 10 minutes per page (sessionStorage); else an error event, no reload", () => {
  const stored = new Map();
  const sessionStorage = { getItem: (k) => (stored.has(k) ? stored.get(k) : null), setItem: (k, v) => stored.set(k, v) };
  const reloads = [];
  const page = (at) => {
    const ctx = setup({ sessionStorage, onReload: () => reloads.push(at) });
    ctx.clock.advance(at);
    ctx.ws().open();
    ctx.ws().drop(4010, "protocol");
    return ctx;
  };
  page(1000);
  assert.deepEqual(reloads, [1000]);
  const again = page(1000 + 599999); // the reloaded page, with the same stale script
  assert.deepEqual(reloads, [1000]);
  assert.deepEqual(again.events.reload, []);
  assert.equal(again.events.error.at(-1).code, "reload_loop");
  assert.equal(again.rt.state().state, "closed");
  assert.equal(again.rt.state().code, 4010);
  again.clock.advance(60000);
  assert.equal(again.sockets.created.length, 1, "no reconnect either");
  page(1000 + 600000);
  assert.deepEqual(reloads, [1000, 601000]);
  // Storage that throws (denied) does not stop the reload.
  const denied = { getItem() { throw new Error("denied"); }, setItem() {} };
  const ctx = setup({ sessionStorage: denied, onReload: () => reloads.push("denied") });
  ctx.ws().open();
  ctx.ws().drop(4010, "");
  assert.equal(reloads.at(-1), "denied");
});
