/*
 * realtime front-page WebSocket client.
 *
 * Plain ES2017, no build step. Exposes a small API on window.realtime:
 *   state()                      -> snapshot object (see snapshot() below)
 *   send(obj)                    -> true if the JSON was sent, false otherwise
 *   socket()                     -> the current WebSocket (or null)
 *   schemeForPage(protocol)      -> "wss" for "https:", else "ws"
 *   createWebSocketConnection(p) -> new WebSocket for this page's host and path p
 *   backoffDelay(attempt, rand)  -> full-jitter delay in ms (pure)
 *
 * #connection data-state is exactly one of "connecting", "open", "paused", "closed":
 *   connecting  a socket has been created and is not open yet
 *   open        the socket is open
 *   paused      the socket is open but its server lost the channel layer (a "status"
 *               message with live: false): no broadcast arrives until live: true
 *   closed      the socket closed; also kept during the backoff wait
 *               (text then says "reconnecting in N s")
 */
(function (global) {
  "use strict";

  var BACKOFF_BASE_MS = 500;
  var BACKOFF_FACTOR = 2;
  var BACKOFF_CAP_MS = 30000;
  var STABLE_AFTER_MS = 10000;
  var MAX_MESSAGES = 100;
  var MAX_SEEN_BROADCASTS = 1000;
  var LEVELS = ["info", "success", "warning", "error"];
  var NO_RECONNECT_CODES = { 1008: "policy violation" };

  // ---------------------------------------------------------------- pure helpers

  function schemeForPage(protocol) {
    return protocol === "https:" ? "wss" : "ws";
  }

  function backoffDelay(attempt, rand) {
    var r = typeof rand === "function" ? rand() : Math.random();
    var n = Math.max(0, Math.min(attempt | 0, 30));
    var ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(BACKOFF_FACTOR, n));
    return Math.floor(r * ceiling);
  }

  function createWebSocketConnection(path) {
    var loc = global.location;
    var scheme = loc.protocol === "https:" ? "wss://" : "ws://";
    var p = String(path == null ? "/ws/" : path);
    if (p.charAt(0) !== "/") {
      p = "/" + p;
    }
    var url = scheme + loc.host + p;
    return new WebSocket(url);
  }

  function schemeOfUrl(url) {
    var m = /^([a-z][a-z0-9+.-]*):/i.exec(String(url || ""));
    return m ? m[1].toLowerCase() : "";
  }

  // ---------------------------------------------------------------- state

  var state = {
    connection: "connecting",
    scheme: "",
    url: "",
    path: "/ws/",
    attempt: 0,
    reconnectAt: null,
    closeCode: null,
    closeReason: "",
    reconnecting: true,
    welcome: null,
    lastBroadcastId: null,
    broadcasts: null, // {epoch, offset}: where a resume continues the broadcast stream
    messageCount: 0,
    resumes: 0,
    resumeFailed: null,
  };

  var ws = null;
  var seenBroadcasts = new Set();
  var reconnectTimer = null;
  var countdownTimer = null;
  var stableTimer = null;
  var keepAliveTimer = null;
  var started = false;

  function $(id) {
    var doc = global.document;
    return doc && typeof doc.getElementById === "function" ? doc.getElementById(id) : null;
  }

  function safe(fn) {
    return function () {
      try {
        return fn.apply(this, arguments);
      } catch (err) {
        if (global.console && global.console.error) {
          global.console.error("realtime:", err);
        }
        return undefined;
      }
    };
  }

  function snapshot() {
    return {
      connection: state.connection,
      scheme: state.scheme,
      url: state.url,
      path: state.path,
      attempt: state.attempt,
      reconnectAt: state.reconnectAt,
      closeCode: state.closeCode,
      closeReason: state.closeReason,
      reconnecting: state.reconnecting,
      welcome: state.welcome,
      lastBroadcastId: state.lastBroadcastId,
      broadcasts: state.broadcasts,
      messageCount: state.messageCount,
      resumes: state.resumes,
      resumeFailed: state.resumeFailed,
      readyState: ws ? ws.readyState : null,
    };
  }

  // ---------------------------------------------------------------- rendering

  function setConnection(connState, text) {
    state.connection = connState;
    var el = $("connection");
    if (el) {
      el.setAttribute("data-state", connState);
      el.textContent = text == null ? connState : text;
    }
    var ping = $("ping");
    if (ping) {
      ping.disabled = connState !== "open" && connState !== "paused";
    }
  }

  function setScheme(scheme) {
    state.scheme = scheme;
    var el = $("connection");
    if (el) {
      el.setAttribute("data-scheme", scheme);
    }
    var s = $("scheme");
    if (s) {
      s.textContent = scheme;
    }
  }

  function renderPageSecure() {
    var el = $("page-secure");
    if (!el || !global.location) {
      return;
    }
    var secure = global.location.protocol === "https:";
    el.textContent = secure ? "https (secure)" : "http (not secure)";
    el.setAttribute("data-secure", secure ? "true" : "false");
  }

  function closeText() {
    var t = "closed";
    if (state.closeCode != null) {
      t += " (code " + state.closeCode + (state.closeReason ? ": " + state.closeReason : "") + ")";
    }
    return t;
  }

  function renderWelcome(msg) {
    var dl = $("welcome");
    if (!dl) {
      return;
    }
    var doc = global.document;
    while (dl.firstChild) {
      dl.removeChild(dl.firstChild);
    }
    function row(label, value, key) {
      var dt = doc.createElement("dt");
      dt.textContent = label;
      var dd = doc.createElement("dd");
      dd.textContent = value;
      if (key) {
        dd.setAttribute("data-key", key);
      }
      dl.appendChild(dt);
      dl.appendChild(dd);
    }
    row("Secure", msg.secure ? "yes" : "no", "secure");
    if (msg.scheme) {
      row("Scheme", String(msg.scheme), "scheme");
    }
    if (msg.worker != null && msg.worker !== "") {
      row("Worker", String(msg.worker), "worker");
    }
    if (msg.user != null && msg.user !== "") {
      row("User", String(msg.user), "user");
    }
    var tls = msg.tls && typeof msg.tls === "object" ? msg.tls : null;
    if (tls && tls.version) {
      row("TLS version", String(tls.version), "tls-version");
    }
    if (tls && tls.cipher) {
      row("Cipher", String(tls.cipher), "tls-cipher");
    }
  }

  function timeElement(date) {
    var doc = global.document;
    var t = doc.createElement("time");
    t.setAttribute("datetime", date.toISOString());
    t.textContent = date.toLocaleTimeString();
    return t;
  }

  function addMessageItem(type, payload, raw) {
    var list = $("messages");
    var doc = global.document;
    state.messageCount += 1;
    if (!list || !doc) {
      return;
    }
    var li = doc.createElement("li");
    li.className = "msg";
    li.setAttribute("data-type", type);
    li.appendChild(timeElement(new Date()));

    var typeEl = doc.createElement("span");
    typeEl.className = "type";
    typeEl.textContent = type;
    li.appendChild(typeEl);

    if (type === "broadcast" && payload) {
      li.className += " level-" + levelOf(payload);
    } else if (type === "error") {
      li.className += " level-error";
    } else if (type === "(invalid)") {
      li.className += " level-warning";
    }

    var pre = doc.createElement("pre");
    pre.className = "json";
    pre.textContent = payload !== undefined ? JSON.stringify(payload) : String(raw);
    li.appendChild(pre);

    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_MESSAGES) {
      list.removeChild(list.lastElementChild || list.lastChild);
    }
  }

  function levelOf(payload) {
    return LEVELS.indexOf(payload.level) >= 0 ? payload.level : "info";
  }

  // Broadcasts are listed newest (largest id) first, each id once, whatever order they
  // arrive in: server-rendered on load, live, or replayed after a reconnect.
  function showBroadcast(msg) {
    var list = $("broadcasts");
    var doc = global.document;
    if (!list || !doc) {
      return;
    }
    var level = levelOf(msg);
    var li = doc.createElement("li");
    li.className = "broadcast level-" + level;
    li.setAttribute("data-broadcast-id", String(msg.id));
    li.setAttribute("data-level", level);
    var text = doc.createElement("p");
    text.className = "broadcast-message";
    text.textContent = msg.message == null ? "" : String(msg.message);
    li.appendChild(text);
    var sent = doc.createElement("time");
    sent.className = "sent-at";
    sent.setAttribute("datetime", String(msg.sent_at || ""));
    sent.textContent = msg.sent_at ? new Date(msg.sent_at).toLocaleString() : "";
    li.appendChild(sent);
    var before = list.firstElementChild;
    while (before && Number(before.getAttribute("data-broadcast-id")) > msg.id) {
      before = before.nextElementSibling;
    }
    list.insertBefore(li, before);
    var empty = $("no-broadcasts");
    if (empty) {
      empty.hidden = true;
    }
  }

  function rememberRenderedBroadcasts() {
    // The broadcast stream's position when the page was rendered: resuming from it covers
    // what was sent between the page load and the first connection.
    var body = global.document && global.document.body;
    var epoch = body && body.getAttribute && body.getAttribute("data-broadcasts-epoch");
    var offset = body && body.getAttribute && body.getAttribute("data-broadcasts-offset");
    if (epoch && offset != null && offset !== "" && !isNaN(Number(offset))) {
      state.broadcasts = { epoch: epoch, offset: Number(offset) };
    }
    var list = $("broadcasts");
    var items = list ? list.querySelectorAll("li[data-broadcast-id]") : [];
    for (var i = 0; i < items.length; i++) {
      rememberBroadcast(Number(items[i].getAttribute("data-broadcast-id")));
    }
  }

  // ---------------------------------------------------------------- message handling

  function rememberBroadcast(id) {
    seenBroadcasts.add(id);
    if (seenBroadcasts.size > MAX_SEEN_BROADCASTS) {
      var oldest = seenBroadcasts.values().next().value;
      seenBroadcasts.delete(oldest);
    }
    if (typeof id === "number" && (state.lastBroadcastId == null || id > state.lastBroadcastId)) {
      state.lastBroadcastId = id;
    }
  }

  function handleMessage(data) {
    if (typeof data !== "string") {
      addMessageItem("(binary)", undefined, "[binary frame ignored]");
      return;
    }
    var msg;
    try {
      msg = JSON.parse(data);
    } catch (err) {
      addMessageItem("(invalid)", undefined, data);
      return;
    }
    if (!msg || typeof msg !== "object" || Array.isArray(msg)) {
      addMessageItem("(invalid)", msg, data);
      return;
    }
    var type = typeof msg.type === "string" ? msg.type : "(untyped)";

    if (type === "broadcast") {
      var id = msg.id;
      if (id != null && seenBroadcasts.has(id)) {
        return; // duplicate: already shown
      }
      if (id != null) {
        rememberBroadcast(id);
      }
      if (typeof msg.offset === "number" && state.broadcasts && msg.offset > state.broadcasts.offset) {
        state.broadcasts.offset = msg.offset;
      }
      showBroadcast(msg);
    } else if (type === "welcome") {
      state.welcome = msg;
      keepAlive(msg.idle_timeout);
      state.attempt = 0;
      renderWelcome(msg);
      // A known position went in the URL (resumeQuery): what was missed follows, then
      // `resumed`. With none yet (no rendered page), the socket's own start is the position.
      if (!state.broadcasts && msg.broadcasts) {
        state.broadcasts = { epoch: msg.broadcasts.epoch, offset: msg.broadcasts.offset };
      }
    } else if (type === "status") {
      if (msg.live === false && state.connection === "open") {
        setConnection("paused", "live updates paused");
      } else if (msg.live === true && state.connection === "paused") {
        setConnection("open", "open");
      }
    } else if (type === "resumed") {
      state.resumes += 1;
      if (state.broadcasts && typeof msg.offset === "number") {
        state.broadcasts = { epoch: msg.epoch, offset: Math.max(msg.offset, state.broadcasts.offset) };
      }
    } else if (type === "resume_failed") {
      state.resumeFailed = msg;
      state.broadcasts = { epoch: msg.epoch, offset: msg.offset };
      reloadOnce();
    }
    addMessageItem(type, msg, data);
  }

  // The gap was larger than the server replays: a reload shows the current state. At most
  // once a minute, so that a server that keeps refusing cannot put the page in a loop.
  function reloadOnce() {
    var storage = global.sessionStorage;
    var last = storage ? Number(storage.getItem("realtime.reloadedAt") || 0) : 0;
    if (Date.now() - last < 60000 || !global.location || !global.location.reload) {
      return;
    }
    if (storage) {
      storage.setItem("realtime.reloadedAt", String(Date.now()));
    }
    global.location.reload();
  }

  // ---------------------------------------------------------------- connection lifecycle

  // The server closes a socket that sends nothing for welcome.idle_timeout seconds (code
  // 4000); a ping every third of that keeps an idle page connected.
  function keepAlive(seconds) {
    stopKeepAlive();
    if (typeof seconds === "number" && seconds > 0) {
      keepAliveTimer = setInterval(safe(function () {
        send({ type: "ping" });
      }), Math.max(seconds / 3, 1) * 1000);
    }
  }

  function stopKeepAlive() {
    if (keepAliveTimer) {
      clearInterval(keepAliveTimer);
      keepAliveTimer = null;
    }
  }

  function clearTimers() {
    if (reconnectTimer) {
      clearTimeout(reconnectTimer);
      reconnectTimer = null;
    }
    if (countdownTimer) {
      clearInterval(countdownTimer);
      countdownTimer = null;
    }
    state.reconnectAt = null;
  }

  // The broadcast position to resume from, in the URL: the server replays what was missed
  // before any live broadcast, so a drop in between cannot skip one.
  function resumeQuery() {
    if (!state.broadcasts) {
      return "";
    }
    return "?broadcasts=" + encodeURIComponent(state.broadcasts.epoch + ":" + state.broadcasts.offset);
  }

  function connect() {
    clearTimers();
    if (stableTimer) {
      clearTimeout(stableTimer);
      stableTimer = null;
    }
    state.reconnecting = true;
    var sock;
    try {
      sock = createWebSocketConnection(state.path + resumeQuery());
    } catch (err) {
      if (global.console && global.console.error) {
        global.console.error("realtime: could not create WebSocket", err);
      }
      ws = null;
      state.closeCode = null;
      state.closeReason = String((err && err.message) || err);
      setConnection("closed", "closed (" + state.closeReason + ")");
      scheduleReconnect();
      return null;
    }
    ws = sock;
    state.url = sock.url || "";
    state.closeCode = null;
    state.closeReason = "";
    setScheme(schemeOfUrl(sock.url) || schemeForPage(global.location.protocol));
    setConnection("connecting", "connecting");

    sock.onopen = safe(function () {
      if (sock !== ws) {
        return;
      }
      setConnection("open", "open");
      stableTimer = setTimeout(function () {
        stableTimer = null;
        if (sock === ws && sock.readyState === 1) {
          state.attempt = 0;
        }
      }, STABLE_AFTER_MS);
    });

    sock.onmessage = safe(function (event) {
      if (sock !== ws) {
        return;
      }
      handleMessage(event.data);
    });

    sock.onerror = safe(function () {
      // The browser always follows an error with a close event; handle it there.
    });

    sock.onclose = safe(function (event) {
      if (sock !== ws) {
        return;
      }
      stopKeepAlive();
      if (stableTimer) {
        clearTimeout(stableTimer);
        stableTimer = null;
      }
      state.closeCode = event && typeof event.code === "number" ? event.code : null;
      state.closeReason = (event && event.reason) || "";
      if (state.closeCode != null && NO_RECONNECT_CODES[state.closeCode]) {
        state.reconnecting = false;
        setConnection(
          "closed",
          closeText() + " — not reconnecting (" + NO_RECONNECT_CODES[state.closeCode] + ")"
        );
        return;
      }
      setConnection("closed", closeText());
      scheduleReconnect();
    });

    return sock;
  }

  function scheduleReconnect() {
    clearTimers();
    var delay = backoffDelay(state.attempt);
    state.attempt += 1;
    state.reconnecting = true;
    state.reconnectAt = Date.now() + delay;

    var base = closeText();
    if (state.closeCode == null && state.closeReason) {
      base = "closed (" + state.closeReason + ")";
    }
    function tick() {
      var left = Math.max(0, (state.reconnectAt || Date.now()) - Date.now());
      setConnection("closed", base + " — reconnecting in " + Math.ceil(left / 1000) + " s");
    }
    tick();
    countdownTimer = setInterval(safe(tick), 1000);
    reconnectTimer = setTimeout(safe(connect), delay);
  }

  // ---------------------------------------------------------------- public API

  function send(obj) {
    try {
      if (!ws || ws.readyState !== 1) {
        return false;
      }
      ws.send(typeof obj === "string" ? obj : JSON.stringify(obj));
      return true;
    } catch (err) {
      if (global.console && global.console.error) {
        global.console.error("realtime: send failed", err);
      }
      return false;
    }
  }

  function readWsPath() {
    var doc = global.document;
    var body = doc && doc.body;
    var conn = $("connection");
    return (
      (body && body.getAttribute && body.getAttribute("data-ws-path")) ||
      (conn && conn.getAttribute("data-ws-path")) ||
      "/ws/"
    );
  }

  var start = safe(function () {
    if (started) {
      return;
    }
    started = true;
    state.path = readWsPath();
    renderPageSecure();
    rememberRenderedBroadcasts();
    var ping = $("ping");
    if (ping) {
      ping.addEventListener("click", safe(function () {
        send({ type: "ping" });
      }));
    }
    connect();
  });

  global.realtime = {
    state: snapshot,
    send: send,
    socket: function () {
      return ws;
    },
    schemeForPage: schemeForPage,
    createWebSocketConnection: createWebSocketConnection,
    backoffDelay: backoffDelay,
  };

  var doc = global.document;
  if (doc && typeof doc.getElementById === "function" && typeof WebSocket !== "undefined") {
    if (doc.readyState === "loading") {
      doc.addEventListener("DOMContentLoaded", start);
    } else {
      start();
    }
  }
})(typeof window !== "undefined" ? window : globalThis);
