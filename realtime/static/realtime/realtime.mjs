/**
 * realtime.mjs: WebSocket client for the realtime server, a browser ES module (ES2017 plus
 * import/export, no build step). No page markup: it uses only globalThis.location and WebSocket.
 *
 *   import { connect } from "./realtime.mjs";
 *   const rt = connect({ path: "/ws/" }); // also: url, WebSocket, broadcasts: {epoch, offset},
 *                                         // user: {epoch, offset} (subscribes "user" from there)
 *   const unsubscribe = rt.subscribe("orders.42", (message) => {}, { onReset(info) {}, onEnd(reason) {} });
 *   rt.subscribe("chat.lobby", fn, { since: {epoch, offset} }); // a page rendered up to there
 *   rt.subscribe("orders.board", fn, { signed: token }); // a name the view signed (live HTML)
 *   const off = rt.on("broadcast", (broadcast) => {});
 *   await rt.publish("chat.lobby", {text: "hi"}, {event, ephemeral}); // -> offset (null: ephemeral)
 *   await rt.call("cart.add", {sku: 7}, {timeout: 10000});           // -> the reply's data
 *   rt.setPresence("chat.lobby", {typing: true});                   // kept across reconnects
 *   rt.send(obj) -> bool; rt.state() -> snapshot; rt.close() stops for good.
 * Options also: onReload(info), called once when the server no longer serves this script's
 * protocol version (default: location.reload()), at most once per 10 minutes per tab (a
 * sessionStorage timestamp): within them the client stops with an `error` {code:
 * "reload_loop"} instead, so that a script a cache keeps serving cannot reload in a loop.
 * Tests inject random, randomUUID, now, setTimeout, clearTimeout, setInterval,
 * clearInterval and sessionStorage.
 *
 * Events (changes after connect(), which starts "connecting"):
 *   state          {state: "connecting"|"open"|"paused"|"closed", code, reason, reconnectIn, welcome}
 *   broadcast      each `broadcast`, once
 *   message        each `message` {topic, event, data, offset}, once: subscribed topics and "user"
 *   presence       {kind: "presence"|"join"|"leave"|"update", topic, users, user}
 *   resume_failed  {topic (null: broadcasts), reason, epoch, offset, detail}: reload that state
 *   unsubscribed   {topic, reason, detail}: the server ended a subscription (onEnd is called)
 *   error          other server `error` messages (a publish's own reject its promise), and
 *                  {code: "reload_loop"} when a reload is not asked again (above)
 *   reload         {reason, detail}: the server asked the page to reload (onReload is called)
 *   frame          every message the server sends, as an object, after it was handled
 *
 * Protocol: JSON text frames, version 3: the socket offers the subprotocol `realtime.v3`; a
 * `reload` message or close code 4010 means the server no longer serves it: onReload is
 * called and the client stops (a new script is needed, reconnecting would not help). A socket opens with `welcome` {idle_timeout, broadcasts: {epoch,
 * offset}, user_topic: {epoch, offset} | null}; the server has subscribed it to "user". A known
 * broadcast position, and the "user" one when subscribed, go in the socket's URL
 * (`?broadcasts=E:N&user=E:N`: replayed before anything live; else the welcome's is taken);
 * then the client sends `subscribe` {topic, since?, signed?} per other subscription. A
 * subscribe's `since` option is where a page that rendered a topic's history has it up to: its
 * first subscribe resumes from there (what was sent after the render is replayed, once). Its
 * `signed` option, a token the server signed for the topic and the page's user, goes in every
 * subscribe of the topic (after each reconnect too): the server checks it instead of the
 * topic's `authorize` rule, and answers an expired one with `error` {code: "stream_expired",
 * topic}, which ends the subscription like any error about a topic: onEnd("stream_expired").
 * A position is an epoch (`subscribed`, welcome, resumed, resume_failed) and the largest offset
 * delivered: lower offsets and repeated broadcast ids are dropped, and a topic's messages before
 * its `subscribed` too (its replay has them). `resume_failed` calls onReset; `unsubscribed`
 * forbidden and `error` about a topic call onEnd and end it, except `rate_limited` with
 * `retry_after` (a replay over the server's budget): the subscribe is sent again after it.
 * Unsubscribing "user" sends nothing.
 *
 * paused: open, but `status` live: false until live: true. closed includes the wait to reconnect
 * (reconnectIn ms): full-jitter backoff, 500 ms * 2^attempt capped at 30 s, attempts reset after
 * 10 s open. Close codes 1008 and 4010 and rt.close() stop reconnecting. A ping every third of
 * welcome.idle_timeout keeps an idle socket open.
 *
 * welcome.limits: whatever is sent (subscribes, publishes, calls, pings, rt.send) is paced to
 * `rate` a second after half of `burst` at once (the other half absorbs the network's jitter),
 * in order, so that the server never drops one or closes with 1008; a message whose UTF-8 is
 * larger than `max_message` is never sent: publish and call reject, setPresence throws, with
 * code "too_large" (rt.send returns false). A welcome without limits (an older server) is
 * taken as the server's defaults, rate 10 and burst 20.
 *
 * Publishes carry a client id (crypto.randomUUID()); one not yet answered `published` when
 * the socket drops is sent again, with the same id, on the next socket after its subscribes
 * (the server stores it once and answers with the first offset), and so is one answered
 * `unavailable`, `timeout` or `rate_limited`, after 1 s doubling to 30 s. Not sent again but
 * rejected: one first sent more than `publish_id_ttl` seconds ago ("expired": the server no
 * longer knows its id), one an anonymous socket sent ("disconnected": its ids were that
 * socket's), one of unchecked size on a socket closed with 1009 ("too_large"), and an
 * ephemeral one ("disconnected"), as is a call pending when the socket drops (a call is
 * never sent twice: it may not be idempotent). A call not answered within `timeout` ms is
 * rejected with code "timeout". Rejections are Errors with `.code` (the server's error code,
 * or "timeout", "disconnected", "closed", "too_large", "expired"), `.detail` and `.id` (the
 * publish's, null for a call). setPresence's latest meta is sent again each time its topic
 * is (re)subscribed.
 */

const BACKOFF_BASE_MS = 500;
const BACKOFF_FACTOR = 2;
const BACKOFF_CAP_MS = 30000;
const STABLE_AFTER_MS = 10000;
const MAX_SEEN_BROADCAST_IDS = 1000;
const PROTOCOL_UNSUPPORTED = 4010;
const NO_RECONNECT_CODES = [1008, PROTOCOL_UNSUPPORTED];
const MESSAGE_TOO_BIG = 1009;
const RETRY_BASE_MS = 1000; // a publish answered with a RETRY_CODES code: sent again after this,
const RETRY_CAP_MS = 30000; // doubling up to this
const RETRY_CODES = ["unavailable", "timeout", "rate_limited"];
const RELOAD_AT_MOST_EVERY_MS = 10 * 60 * 1000;
const RELOAD_KEY = "realtime.protocolReloadAt";
// A welcome without limits (an older server): its default pace, REALTIME_WS_RATE and _BURST.
const SERVER_DEFAULT_LIMITS = { rate: 10, burst: 20 };
const SUBPROTOCOL = "realtime.v3";
const DEFAULT_CALL_TIMEOUT_MS = 10000;
const USER_TOPIC = "user";
const OPEN = 1;

/** Full-jitter delay in ms before reconnect number `attempt` (0-based). */
export function backoffDelay(attempt, random = Math.random) {
  const n = Math.max(0, Math.min(attempt | 0, 30));
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(BACKOFF_FACTOR, n));
  return Math.floor(random() * ceiling);
}

/** The WebSocket URL for a page location: wss: for an https: page, else ws:. */
export function websocketUrl(location, path = "/ws/") {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const p = String(path == null ? "/ws/" : path);
  return scheme + location.host + (p.charAt(0) === "/" ? p : "/" + p);
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function isPosition(value) {
  return isObject(value) && typeof value.offset === "number";
}

function position(epoch, offset) {
  return { epoch: epoch == null ? null : epoch, offset };
}

function copy(value) {
  return value ? position(value.epoch, value.offset) : null;
}

function report(err) {
  if (globalThis.console && console.error) {
    console.error("realtime:", err);
  }
}

// An Error with the code of a refused publish or call (the server's, or the client's own),
// and the publish's id (null for a call).
function failure(code, detail, id) {
  const err = new Error("realtime: " + code + (detail ? ": " + detail : ""));
  err.code = code;
  err.detail = detail == null ? null : detail;
  err.id = id == null ? null : id;
  return err;
}

let encoder = null;
// The size of a message's text in bytes, as the server counts it (UTF-8).
function byteLength(text) {
  encoder = encoder || new TextEncoder();
  return encoder.encode(text).length;
}

function fallbackUUID(random) {
  let id = "";
  for (let i = 0; i < 32; i++) {
    id += Math.floor(random() * 16).toString(16);
  }
  return id;
}

// The page's sessionStorage, or null (not a browser, or storage denied).
function sessionStore() {
  try {
    return globalThis.sessionStorage || null;
  } catch (err) {
    return null;
  }
}

// Calls fn; an exception (a listener's bug) is reported, not thrown.
function call(fn, ...args) {
  try {
    return fn(...args);
  } catch (err) {
    report(err);
    return undefined;
  }
}

export function connect(options = {}) {
  const clock = {};
  for (const name of ["setTimeout", "clearTimeout", "setInterval", "clearInterval"]) {
    clock[name] = options[name] || globalThis[name].bind(globalThis);
  }
  const random = options.random || Math.random;
  const now = options.now || Date.now;
  const Socket = options.WebSocket || globalThis.WebSocket;
  const cryptoUUID = globalThis.crypto && globalThis.crypto.randomUUID;
  const randomUUID =
    options.randomUUID ||
    (cryptoUUID ? () => globalThis.crypto.randomUUID() : () => fallbackUUID(random));
  const onReload = options.onReload || (() => globalThis.location.reload());
  const url = options.url || websocketUrl(globalThis.location, options.path);
  const storage = "sessionStorage" in options ? options.sessionStorage : sessionStore();

  const listeners = new Map(); // event name -> Set of functions
  const subscriptions = new Map(); // topic -> {handlers: Set of {fn, onReset, onEnd}, pending}
  const positions = new Map(); // topic -> {epoch, offset} delivered
  const presence = new Map(); // topic -> [{id, username}]
  const seenBroadcastIds = new Set();
  // client id -> {message, resolve, reject, socket (last written to), firstSent (ms), checked
  // (its size, against a known max_message), retries, timer (a retry's)}, in order made
  const publishes = new Map();
  const calls = new Map(); // ref -> {message, resolve, reject, timer, sent}
  const presenceMeta = new Map(); // topic -> the latest meta given to setPresence
  let nextRef = 1;
  let reloading = false;
  let broadcastPosition = isPosition(options.broadcasts) ? copy(options.broadcasts) : null;
  // A page that listed the user's messages up to a position resumes "user" from there, in the
  // first socket's URL (a subscribe() of "user" afterwards adds its handler to this one).
  if (isPosition(options.user)) {
    subscriptions.set(USER_TOPIC, { handlers: new Set(), pending: false });
    positions.set(USER_TOPIC, copy(options.user));
  }

  let ws = null;
  let welcome = null; // the current socket's
  let limits = {}; // the latest welcome's: max_message, rate, burst, publish_id_ttl
  let bucket = null; // the current socket's send budget {size, rate, tokens, at}; null: unpaced
  const outbox = []; // {text, stale(), written(socket)} waiting for the budget, in order
  let lastUser; // welcome.user of the previous socket
  let userTopicActive = false; // the server subscribed the current socket to "user"
  let connState = "connecting";
  let closeCode = null;
  let closeReason = "";
  let attempt = 0;
  let stopped = false;
  let reconnectAt = null;
  const timerIds = { reconnect: null, stable: null, keepAlive: null, pace: null };

  // ------------------------------------------------------------ events and state

  function on(name, fn) {
    if (typeof fn !== "function") {
      throw new TypeError("realtime: on(name, fn) needs a function");
    }
    if (!listeners.has(name)) {
      listeners.set(name, new Set());
    }
    const entry = (value) => fn(value); // the same fn may be added twice
    listeners.get(name).add(entry);
    return () => listeners.get(name).delete(entry);
  }

  function emit(name, value) {
    for (const fn of Array.from(listeners.get(name) || [])) {
      call(fn, value);
    }
  }

  function snapshot() {
    const topics = {};
    for (const topic of subscriptions.keys()) {
      topics[topic] = copy(positions.get(topic));
    }
    const reconnectIn = reconnectAt == null ? null : Math.max(0, reconnectAt - now());
    const broadcasts = copy(broadcastPosition);
    const state = { state: connState, code: closeCode, reason: closeReason, reconnectIn, welcome };
    return Object.assign(state, { url, attempt, broadcasts, topics });
  }

  function setState(next) {
    connState = next;
    emit("state", snapshot());
  }

  // Everything sent goes through here: refused (false) if larger than limits.max_message (the
  // server would close the socket with 1009), else written in order within the socket's
  // budget, queued while over it. Before writing, `stale()` true drops it; `written(socket)`
  // follows the write.
  function send(obj, item = {}) {
    const text = typeof obj === "string" ? obj : JSON.stringify(obj);
    if (!ws || ws.readyState !== OPEN || tooLarge(text)) {
      return false;
    }
    outbox.push(Object.assign({ text }, item));
    flush();
    return true;
  }

  function flush() {
    cancel("pace");
    while (outbox.length > 0 && ws && ws.readyState === OPEN) {
      if (outbox[0].stale && outbox[0].stale()) {
        outbox.shift();
        continue;
      }
      const wait = takeToken();
      if (wait > 0) {
        timerIds.pace = clock.setTimeout(flush, wait);
        return;
      }
      const item = outbox.shift();
      const socket = ws;
      if (call(() => socket.send(item.text) || true) && item.written) {
        item.written(socket);
      }
    }
  }

  // The server drops what a socket sends over limits.rate a second (after limits.burst at
  // once), and closes one that keeps on with 1008. Half the burst is kept in reserve for what
  // the network bunches up. Returns 0 (a token taken) or the ms until there is one.
  function startBucket() {
    const rate = limits.rate;
    const size = Math.max(1, Math.floor((typeof limits.burst === "number" ? limits.burst : 2) / 2));
    bucket = typeof rate === "number" && rate > 0 ? { size, rate, tokens: size, at: now() } : null;
  }

  function takeToken() {
    if (!bucket) {
      return 0;
    }
    const t = now();
    bucket.tokens = Math.min(bucket.size, bucket.tokens + ((t - bucket.at) * bucket.rate) / 1000);
    bucket.at = t;
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - bucket.tokens) * 1000) / bucket.rate);
  }

  function tooLarge(text) {
    const max = limits.max_message;
    // A UTF-16 unit is at most 3 bytes of UTF-8: most texts need no counting.
    return typeof max === "number" && max > 0 && text.length * 3 > max && byteLength(text) > max;
  }

  function tooLargeDetail() {
    return "Larger than the server's " + limits.max_message + " bytes: not sent.";
  }

  // ------------------------------------------------------------ subscriptions

  // Calls handler[key](value) for each handler of the subscription that has one.
  function notify(subscription, key, value) {
    for (const handler of subscription ? Array.from(subscription.handlers) : []) {
      if (typeof handler[key] === "function") {
        call(handler[key], value);
      }
    }
  }

  function sendSubscribe(topic) {
    const subscription = subscriptions.get(topic);
    const message = { type: "subscribe", topic };
    const since = positions.get(topic);
    if (since && since.epoch != null) {
      message.since = copy(since);
    }
    if (subscription.signed) {
      message.signed = subscription.signed;
    }
    subscription.pending = true;
    send(message);
  }

  function subscribe(topic, fn, opts = {}) {
    if (typeof topic !== "string" || topic === "" || typeof fn !== "function") {
      throw new TypeError("realtime: subscribe(topic, fn) needs a topic string and a function");
    }
    let subscription = subscriptions.get(topic);
    if (!subscription) {
      subscription = { handlers: new Set(), pending: false, signed: null };
      subscriptions.set(topic, subscription);
      // Later subscribes of the topic keep the first token: a newer one is for the next
      // subscription (a page's region reload subscribes again after unsubscribing).
      subscription.signed = typeof opts.signed === "string" && opts.signed ? opts.signed : null;
      if (isPosition(opts.since) && opts.since.epoch != null && !positions.has(topic)) {
        positions.set(topic, copy(opts.since));
      }
      if (welcome && !(topic === USER_TOPIC && userTopicActive)) {
        sendSubscribe(topic);
      }
    }
    const handler = { fn, onReset: opts.onReset, onEnd: opts.onEnd };
    subscription.handlers.add(handler);
    return () => removeHandler(topic, subscription, handler);
  }

  function removeHandler(topic, subscription, handler) {
    subscription.handlers.delete(handler);
    if (subscription.handlers.size > 0 || subscriptions.get(topic) !== subscription) {
      return;
    }
    subscriptions.delete(topic);
    presence.delete(topic);
    presenceMeta.delete(topic);
    if (!(topic === USER_TOPIC && userTopicActive)) {
      positions.delete(topic);
      send({ type: "unsubscribe", topic });
    }
  }

  // The server ended a subscription: it is not sent again on reconnect.
  function endSubscription(topic, reason, detail) {
    const subscription = subscriptions.get(topic);
    subscriptions.delete(topic);
    positions.delete(topic);
    presence.delete(topic);
    presenceMeta.delete(topic);
    userTopicActive = userTopicActive && topic !== USER_TOPIC;
    notify(subscription, "onEnd", reason);
    emit("unsubscribed", { topic, reason, detail });
  }

  function resetTopic(info) {
    notify(subscriptions.get(info.topic), "onReset", info);
    emit("resume_failed", info);
  }

  // ------------------------------------------------------------ incoming messages

  // The positions the socket resumes from go in its URL (`?broadcasts=E:N&user=E:N`): the
  // server replays what was missed before any live message, so a drop in between cannot make
  // the client hold a position past a message it never got.
  let userInUrl = false;
  function resumeQuery() {
    const parts = [];
    if (broadcastPosition) {
      parts.push("broadcasts=" + encodeURIComponent(positionText(broadcastPosition)));
    }
    userInUrl = subscriptions.has(USER_TOPIC) && positions.has(USER_TOPIC);
    if (userInUrl) {
      parts.push("user=" + encodeURIComponent(positionText(positions.get(USER_TOPIC))));
    }
    return parts.length ? "?" + parts.join("&") : "";
  }

  function positionText(position) {
    return position.epoch + ":" + position.offset;
  }

  function onWelcome(msg) {
    welcome = msg;
    limits = isObject(msg.limits) ? msg.limits : SERVER_DEFAULT_LIMITS;
    startBucket();
    keepAlive(msg.idle_timeout);
    if (!broadcastPosition && isPosition(msg.broadcasts)) {
      broadcastPosition = copy(msg.broadcasts);
    }
    // The server answers a user position in the URL only for a signed-in socket.
    const userResumed = userInUrl && isPosition(msg.user_topic);
    const sendUser = welcomeUserTopic(msg) && !userResumed;
    if (userResumed && subscriptions.has(USER_TOPIC)) {
      subscriptions.get(USER_TOPIC).pending = true; // its replay follows `subscribed`
    }
    for (const topic of subscriptions.keys()) {
      if (topic !== USER_TOPIC || sendUser) {
        sendSubscribe(topic);
      }
    }
    // After the subscribes: the server handles a socket's messages in order. A publish
    // waiting to be retried goes when its timer fires.
    for (const entry of publishes.values()) {
      if (entry.timer == null) {
        sendPublish(entry);
      }
    }
    for (const [ref, entry] of calls) {
      if (!entry.sent) {
        sendCall(ref, entry);
      }
    }
    setState("open"); // last: a state listener may subscribe
  }

  // The server subscribes a signed-in socket to "user" from welcome.user_topic. Returns
  // whether a subscribed "user" is sent all the same: with since, to replay what an earlier
  // socket missed, or without a user_topic (anonymous: the server decides).
  function welcomeUserTopic(msg) {
    if (lastUser !== undefined && lastUser !== msg.user && positions.has(USER_TOPIC)) {
      positions.delete(USER_TOPIC);
      resetTopic({ topic: USER_TOPIC, reason: "user_changed", user: msg.user });
    }
    lastUser = msg.user;
    userTopicActive = isPosition(msg.user_topic);
    const subscribed = subscriptions.has(USER_TOPIC);
    if (subscribed && (positions.has(USER_TOPIC) || !userTopicActive)) {
      return true;
    }
    positions.delete(USER_TOPIC);
    if (userTopicActive) {
      positions.set(USER_TOPIC, copy(msg.user_topic));
    }
    return false;
  }

  function onBroadcast(msg) {
    const offset = typeof msg.offset === "number" ? msg.offset : null;
    const old = offset != null && broadcastPosition && offset <= broadcastPosition.offset;
    if (old || (msg.id != null && seenBroadcastIds.has(msg.id))) {
      return;
    }
    if (msg.id != null) {
      seenBroadcastIds.add(msg.id);
      if (seenBroadcastIds.size > MAX_SEEN_BROADCAST_IDS) {
        seenBroadcastIds.delete(seenBroadcastIds.values().next().value);
      }
    }
    if (offset != null) {
      const welcomed = welcome && isObject(welcome.broadcasts) ? welcome.broadcasts.epoch : null;
      broadcastPosition = position(broadcastPosition ? broadcastPosition.epoch : welcomed, offset);
    }
    emit("broadcast", msg);
  }

  function onTopicMessage(msg) {
    const subscription = subscriptions.get(msg.topic);
    const known = subscription || (msg.topic === USER_TOPIC && userTopicActive);
    if (!known || (subscription && subscription.pending)) {
      return;
    }
    const last = positions.get(msg.topic);
    if (typeof msg.offset === "number") {
      if (last && msg.offset <= last.offset) {
        return;
      }
      positions.set(msg.topic, position(last ? last.epoch : null, msg.offset));
    }
    notify(subscription, "fn", msg);
    emit("message", msg);
  }

  function onSubscribed(msg) {
    const subscription = subscriptions.get(msg.topic);
    if (!subscription) {
      return;
    }
    subscription.pending = false;
    const last = positions.get(msg.topic);
    const offset = typeof msg.offset === "number" ? msg.offset : 0;
    const same = last && last.epoch === msg.epoch;
    positions.set(msg.topic, position(msg.epoch, same ? Math.max(last.offset, offset) : offset));
    sendPresence(msg.topic);
  }

  function onResumeFailed(msg) {
    const topic = typeof msg.topic === "string" ? msg.topic : null;
    const info = Object.assign({}, msg, { topic });
    delete info.type;
    const latest = isPosition(msg) ? copy(msg) : null;
    if (topic == null) {
      broadcastPosition = latest;
      emit("resume_failed", info);
      return;
    }
    positions.delete(topic);
    if (latest) {
      positions.set(topic, latest);
    }
    resetTopic(info);
  }

  function onResumed(msg) {
    if (isPosition(msg)) {
      const same = broadcastPosition && broadcastPosition.epoch === msg.epoch;
      const offset = same ? Math.max(broadcastPosition.offset, msg.offset) : msg.offset;
      broadcastPosition = position(msg.epoch, offset);
    }
  }

  function onPresence(msg) {
    const user = isObject(msg.user) ? msg.user : null;
    let users = Array.isArray(msg.users) ? msg.users.slice() : [];
    if (msg.type === "update") {
      if (!user) {
        return;
      }
      users = (presence.get(msg.topic) || []).map((u) => (u.id === user.id ? user : u));
    } else if (msg.type !== "presence") {
      if (!user) {
        return;
      }
      users = (presence.get(msg.topic) || []).filter((u) => u.id !== user.id);
      users = msg.type === "join" ? users.concat([user]) : users;
    }
    presence.set(msg.topic, users);
    const event = { kind: msg.type, topic: msg.topic, users: users.slice() };
    if (user && msg.type !== "presence") {
      event.user = user;
    }
    emit("presence", event);
  }

  function onError(msg) {
    if (msg.id != null && publishes.has(msg.id)) {
      onPublishError(publishes.get(msg.id), msg);
    } else if (msg.code === "rate_limited" && typeof msg.retry_after === "number") {
      // A replay over the server's budget was refused whole, nothing changed: ask again later.
      retryLater(msg);
      emit("error", msg);
    } else if (msg.request === "publish" || msg.request === "presence_update") {
      // A refused publish or presence update ends no subscription.
      emit("error", msg);
    } else if (typeof msg.topic === "string" && subscriptions.has(msg.topic)) {
      endSubscription(msg.topic, msg.code || "forbidden", msg.detail);
    } else {
      emit("error", msg);
    }
  }

  // A refused subscribe is sent again after `retry_after` seconds, on the same socket only
  // (a new socket subscribes to everything anyway) and only while it is still wanted.
  function retryLater(msg) {
    const subscription = subscriptions.get(msg.topic);
    if (typeof msg.topic !== "string" || !subscription) {
      return;
    }
    const socket = ws;
    clock.setTimeout(() => {
      if (ws === socket && welcome && subscriptions.get(msg.topic) === subscription) {
        sendSubscribe(msg.topic);
      }
    }, msg.retry_after * 1000);
  }

  function onStatus(msg) {
    if (msg.live === false && connState === "open") {
      setState("paused");
    } else if (msg.live === true && connState === "paused") {
      setState("open");
    }
  }

  function onUnsubscribed(msg) {
    // "requested" only answers our unsubscribe (the topic may be subscribed again since).
    if (msg.reason === "forbidden" && typeof msg.topic === "string") {
      endSubscription(msg.topic, "forbidden", msg.detail);
    }
  }

  function onPublished(msg) {
    settlePublish(msg.id, null, typeof msg.offset === "number" ? msg.offset : null);
  }

  function onReply(msg) {
    const entry = calls.get(msg.ref);
    if (!entry) {
      return; // timed out already, or not ours
    }
    settleCall(msg.ref);
    if (isObject(msg.error)) {
      entry.reject(failure(msg.error.code || "error", msg.error.detail, null));
    } else {
      entry.resolve(msg.data);
    }
  }

  // The server no longer serves this script's protocol version: a new script is needed.
  function onReloadMessage(msg) {
    stopped = true;
    askReload({ reason: msg.reason || "protocol", detail: msg.detail || "" });
  }

  function askReload(info) {
    if (reloading) {
      return;
    }
    reloading = true;
    if (!mayReload()) {
      const detail = "The page reloaded less than 10 minutes ago and still has a script the " +
        "server no longer serves (a stale cache?): not reloading again.";
      emit("error", { type: "error", code: "reload_loop", reason: info.reason, detail });
      return;
    }
    emit("reload", info);
    call(onReload, info);
  }

  // At most one reload per RELOAD_AT_MOST_EVERY_MS in this tab: a stale script that a cache
  // keeps serving would otherwise reload the page in a loop.
  function mayReload() {
    return call(() => {
      const last = storage ? storage.getItem(RELOAD_KEY) : null;
      if (last != null && now() - Number(last) < RELOAD_AT_MOST_EVERY_MS) {
        return false;
      }
      if (storage) {
        storage.setItem(RELOAD_KEY, String(now()));
      }
      return true;
    }) !== false;
  }

  const HANDLERS = {
    welcome: onWelcome, broadcast: onBroadcast, message: onTopicMessage, subscribed: onSubscribed,
    unsubscribed: onUnsubscribed, resume_failed: onResumeFailed, resumed: onResumed,
    presence: onPresence, join: onPresence, leave: onPresence, update: onPresence,
    error: onError, status: onStatus, published: onPublished, reply: onReply,
    reload: onReloadMessage,
  };

  // ------------------------------------------------------------ publish, call, presence

  function publish(topic, data, opts = {}) {
    if (typeof topic !== "string" || topic === "") {
      return Promise.reject(new TypeError("realtime: publish(topic, data) needs a topic string"));
    }
    if (stopped) {
      return Promise.reject(failure("closed", "The client is closed.", null));
    }
    const message = { type: "publish", topic, data: data === undefined ? null : data };
    if (opts.event != null) {
      message.event = opts.event;
    }
    if (opts.ephemeral) {
      message.ephemeral = true;
    }
    message.id = String(opts.id || randomUUID());
    return new Promise((resolve, reject) => {
      const entry = { message, resolve, reject, socket: null, firstSent: null, checked: false };
      publishes.set(message.id, Object.assign(entry, { retries: 0, timer: null }));
      sendPublish(entry); // not open: only its size is checked (the next welcome sends it)
    });
  }

  // Sends a pending publish (again), unless it is larger than the server takes or older than
  // the server remembers its id for (sent again, it would be stored twice): those reject.
  function sendPublish(entry) {
    const id = entry.message.id;
    const text = JSON.stringify(entry.message);
    if (tooLarge(text)) {
      settlePublish(id, failure("too_large", tooLargeDetail(), id));
    } else if (welcome && !expired(entry)) {
      entry.checked = typeof limits.max_message === "number";
      send(text, {
        stale: () => publishes.get(id) !== entry || expired(entry),
        written(socket) {
          entry.socket = socket;
          entry.firstSent = entry.firstSent == null ? now() : entry.firstSent;
        },
      });
    }
  }

  function expired(entry) {
    const ttl = limits.publish_id_ttl;
    if (entry.firstSent == null || !(ttl > 0) || now() - entry.firstSent < ttl * 1000) {
      return false;
    }
    const detail = "Unanswered for " + ttl + " s: sent again, it could be stored twice.";
    settlePublish(entry.message.id, failure("expired", detail, entry.message.id));
    return true;
  }

  // unavailable, timeout, rate_limited: stored or not, it is sent again with the same id after
  // a backoff (the page retrying with a new id could store it twice); other codes reject.
  function onPublishError(entry, msg) {
    const id = entry.message.id;
    const code = msg.code || "error";
    if (!RETRY_CODES.includes(code) || entry.message.ephemeral) {
      settlePublish(id, failure(code, msg.detail, id));
    } else if (entry.timer == null) {
      const backoff = Math.min(RETRY_CAP_MS, RETRY_BASE_MS * Math.pow(2, entry.retries));
      const asked = typeof msg.retry_after === "number" ? msg.retry_after * 1000 : 0;
      entry.retries += 1;
      entry.timer = clock.setTimeout(() => {
        entry.timer = null;
        sendPublish(entry); // not open: the next welcome sends it
      }, Math.max(backoff, asked));
    }
  }

  function settlePublish(id, err, offset) {
    const entry = publishes.get(id);
    if (!entry) {
      return;
    }
    publishes.delete(id);
    if (entry.timer != null) {
      clock.clearTimeout(entry.timer);
    }
    if (err) {
      entry.reject(err);
    } else {
      entry.resolve(offset);
    }
  }

  function callServer(name, data, opts = {}) {
    if (typeof name !== "string" || name === "") {
      return Promise.reject(new TypeError("realtime: call(name, data) needs a name string"));
    }
    if (stopped) {
      return Promise.reject(failure("closed", "The client is closed.", null));
    }
    const ref = nextRef++;
    const message = { type: "call", name, data: data === undefined ? null : data, ref };
    const timeout = typeof opts.timeout === "number" ? opts.timeout : DEFAULT_CALL_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const entry = { message, resolve, reject, timer: null, sent: false };
      entry.timer = clock.setTimeout(() => {
        calls.delete(ref);
        reject(failure("timeout", "No reply within " + timeout + " ms.", null));
      }, timeout);
      calls.set(ref, entry);
      sendCall(ref, entry); // not open: only its size is checked (the next welcome sends it)
    });
  }

  function sendCall(ref, entry) {
    const text = JSON.stringify(entry.message);
    if (tooLarge(text)) {
      settleCall(ref);
      entry.reject(failure("too_large", tooLargeDetail(), null));
    } else if (welcome) {
      const written = () => (entry.sent = true);
      send(text, { stale: () => calls.get(ref) !== entry, written });
    }
  }

  function settleCall(ref) {
    const entry = calls.get(ref);
    calls.delete(ref);
    if (entry && entry.timer != null) {
      clock.clearTimeout(entry.timer);
    }
  }

  // Socket `socket` dropped (`all`: for good). Calls sent on it may or may not have run, so
  // they are not sent again; nor are ephemeral publishes (stale by the next socket), an
  // anonymous socket's publishes (the server remembers their ids on that socket only: sent
  // again, one would be stored twice), nor after 1009 a publish written there whose size was
  // not checked (it may be what was too large).
  function dropInFlight(socket, anonymous, code, detail, all) {
    for (const [ref, entry] of Array.from(calls)) {
      if (all || entry.sent) {
        settleCall(ref);
        entry.reject(failure(code, detail, null));
      }
    }
    for (const [id, entry] of Array.from(publishes)) {
      const on = entry.socket === socket;
      if (all || entry.message.ephemeral || (on && anonymous)) {
        settlePublish(id, failure(code, detail, id));
      } else if (on && closeCode === MESSAGE_TOO_BIG && !entry.checked) {
        settlePublish(id, failure("too_large", "The server closed the socket with 1009.", id));
      }
    }
  }

  function setPresence(topic, meta) {
    if (typeof topic !== "string" || topic === "" || !isObject(meta)) {
      throw new TypeError("realtime: setPresence(topic, meta) needs a topic string and an object");
    }
    const text = JSON.stringify({ type: "presence_update", topic, meta });
    if (tooLarge(text)) {
      throw failure("too_large", tooLargeDetail(), null);
    }
    presenceMeta.set(topic, meta);
    const subscription = subscriptions.get(topic);
    if (welcome && !(subscription && subscription.pending)) {
      sendPresence(topic); // else once its `subscribed` comes
    }
  }

  function sendPresence(topic) {
    if (presenceMeta.has(topic)) {
      send({ type: "presence_update", topic, meta: presenceMeta.get(topic) });
    }
  }

  function handleFrame(data) {
    let msg = null;
    try {
      msg = typeof data === "string" ? JSON.parse(data) : null;
    } catch (err) {
      return; // not JSON: ignored
    }
    if (isObject(msg) && Object.prototype.hasOwnProperty.call(HANDLERS, msg.type)) {
      HANDLERS[msg.type](msg);
    }
    if (isObject(msg)) {
      emit("frame", msg);
    }
  }

  // ------------------------------------------------------------ connection lifecycle

  function cancel(...names) {
    for (const name of names) {
      if (timerIds[name] != null) {
        (name === "keepAlive" ? clock.clearInterval : clock.clearTimeout)(timerIds[name]);
        timerIds[name] = null;
      }
    }
    if (names.includes("reconnect")) {
      reconnectAt = null;
    }
  }

  // The server closes a socket that sends nothing for idle_timeout seconds.
  function keepAlive(seconds) {
    cancel("keepAlive");
    if (typeof seconds === "number" && seconds > 0) {
      const every = Math.max(seconds / 3, 1) * 1000;
      // Anything queued to be sent keeps the socket open as well as a ping.
      timerIds.keepAlive = clock.setInterval(() => outbox.length || send({ type: "ping" }), every);
    }
  }

  function openSocket() {
    cancel("reconnect");
    welcome = null;
    closeCode = null;
    closeReason = "";
    let sock;
    try {
      sock = new Socket(url + resumeQuery(), [SUBPROTOCOL]);
    } catch (err) {
      report(err);
      closeReason = String((err && err.message) || err);
      scheduleReconnect();
      return;
    }
    ws = sock;
    sock.onopen = () => sock === ws && onOpen();
    sock.onmessage = (event) => sock === ws && call(handleFrame, event && event.data);
    sock.onerror = () => {}; // a close event always follows
    sock.onclose = (event) => sock === ws && onClose(event);
    setState("connecting");
  }

  function onOpen() {
    timerIds.stable = clock.setTimeout(() => {
      timerIds.stable = null;
      attempt = 0;
    }, STABLE_AFTER_MS);
  }

  function onClose(event) {
    const socket = ws;
    const anonymous = welcome != null && welcome.user == null;
    ws = null;
    welcome = null;
    bucket = null;
    outbox.length = 0;
    cancel("keepAlive", "stable", "pace");
    for (const subscription of subscriptions.values()) {
      subscription.pending = false;
    }
    closeCode = event && typeof event.code === "number" ? event.code : null;
    closeReason = (event && event.reason) || "";
    stopped = stopped || NO_RECONNECT_CODES.includes(closeCode);
    if (closeCode === PROTOCOL_UNSUPPORTED) {
      askReload({ reason: "protocol", detail: closeReason });
    }
    if (stopped) {
      dropInFlight(socket, anonymous, "closed", "The client is closed.", true);
    } else {
      dropInFlight(socket, anonymous, "disconnected", "The connection was lost.", false);
    }
    if (stopped) {
      setState("closed");
    } else {
      scheduleReconnect();
    }
  }

  function scheduleReconnect() {
    cancel("reconnect");
    const delay = backoffDelay(attempt, random);
    attempt += 1;
    reconnectAt = now() + delay;
    timerIds.reconnect = clock.setTimeout(openSocket, delay);
    setState("closed");
  }

  function close() {
    stopped = true;
    cancel("reconnect");
    const sock = ws;
    ws = null;
    if (sock) {
      call(() => sock.close(1000, "client closed"));
    }
    onClose({ code: 1000, reason: "client closed" }); // the socket's own close event is ignored
  }

  openSocket();
  return {
    subscribe, on, send, publish, call: callServer, setPresence, state: snapshot, close,
  };
}
