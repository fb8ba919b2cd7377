/**
 * The demo page's client: renders what realtime.mjs says (the connection, the welcome, the
 * broadcasts, every message) into the page's markup. The connection itself (wss: or ws:,
 * backoff, keep-alive, resume by position in the URL, each broadcast once) is realtime.mjs's.
 *
 * window.realtime, for tests and the console:
 *   state()   -> {connection, closeCode, closeReason, reconnectAt, welcome, broadcasts,
 *                 messageCount, resumes, resumeFailed}
 *   send(obj) -> true if the JSON was sent
 *
 * #connection data-state is exactly one of "connecting", "open", "paused", "closed":
 *   paused   open, but its server lost the channel layer (status live: false)
 *   closed   also during the wait to reconnect (text: "reconnecting in N s"); after 1008 the
 *            client stops ("not reconnecting")
 */

import { connect } from "./realtime.mjs";

const MAX_MESSAGES = 100;
const LEVELS = ["info", "success", "warning", "error"];
const NO_RECONNECT = { 1008: "policy violation" };

/** The connection's words for a state event of realtime.mjs (pure: tested in node). */
export function connectionText(event, now = Date.now()) {
  if (event.state === "paused") {
    return "live updates paused";
  }
  if (event.state !== "closed") {
    return event.state;
  }
  let text = "closed";
  if (event.code != null) {
    text += ` (code ${event.code}${event.reason ? ": " + event.reason : ""})`;
  } else if (event.reason) {
    text += ` (${event.reason})`;
  }
  if (NO_RECONNECT[event.code]) {
    return `${text} — not reconnecting (${NO_RECONNECT[event.code]})`;
  }
  if (event.reconnectAt != null) {
    const seconds = Math.ceil(Math.max(0, event.reconnectAt - now) / 1000);
    text += ` — reconnecting in ${seconds} s`;
  }
  return text;
}

function levelOf(message) {
  return LEVELS.includes(message.level) ? message.level : "info";
}

function startPage(doc) {
  const $ = (id) => doc.getElementById(id);
  const body = doc.body;
  const page = {
    connection: "connecting",
    closeCode: null,
    closeReason: "",
    reconnectAt: null,
    welcome: null,
    messageCount: 0,
    resumes: 0,
    resumeFailed: null,
  };
  let countdown = null;

  function renderedPosition() {
    const epoch = body.getAttribute("data-broadcasts-epoch");
    const offset = body.getAttribute("data-broadcasts-offset");
    return epoch && offset !== null && offset !== "" && !Number.isNaN(Number(offset))
      ? { epoch, offset: Number(offset) }
      : undefined;
  }

  function setConnection(event) {
    page.connection = event.state;
    page.closeCode = event.code ?? null;
    page.closeReason = event.reason || "";
    page.reconnectAt = event.reconnectIn != null ? Date.now() + event.reconnectIn : null;
    const render = () => {
      const el = $("connection");
      if (el) {
        el.setAttribute("data-state", event.state);
        el.textContent = connectionText({ ...event, reconnectAt: page.reconnectAt });
      }
    };
    render();
    clearInterval(countdown);
    countdown = page.reconnectAt != null ? setInterval(render, 1000) : null;
    const ping = $("ping");
    if (ping) {
      ping.disabled = event.state !== "open" && event.state !== "paused";
    }
  }

  function renderScheme(url) {
    const scheme = /^wss:/i.test(url) ? "wss" : "ws";
    $("connection")?.setAttribute("data-scheme", scheme);
    const el = $("scheme");
    if (el) {
      el.textContent = scheme;
    }
  }

  function renderWelcome(msg) {
    const dl = $("welcome");
    if (!dl) {
      return;
    }
    dl.replaceChildren();
    const row = (label, value, key) => {
      const dt = doc.createElement("dt");
      dt.textContent = label;
      const dd = doc.createElement("dd");
      dd.textContent = value;
      dd.setAttribute("data-key", key);
      dl.append(dt, dd);
    };
    row("Secure", msg.secure ? "yes" : "no", "secure");
    if (msg.scheme) row("Scheme", String(msg.scheme), "scheme");
    if (msg.worker) row("Worker", String(msg.worker), "worker");
    if (msg.user) row("User", String(msg.user), "user");
    if (msg.tls?.version) row("TLS version", String(msg.tls.version), "tls-version");
    if (msg.tls?.cipher) row("Cipher", String(msg.tls.cipher), "tls-cipher");
  }

  function addMessageItem(msg) {
    page.messageCount += 1;
    const list = $("messages");
    if (!list) {
      return;
    }
    const li = doc.createElement("li");
    li.className = "msg";
    li.setAttribute("data-type", msg.type);
    if (msg.type === "broadcast") li.className += ` level-${levelOf(msg)}`;
    if (msg.type === "error") li.className += " level-error";
    const time = doc.createElement("time");
    const now = new Date();
    time.setAttribute("datetime", now.toISOString());
    time.textContent = now.toLocaleTimeString();
    const type = doc.createElement("span");
    type.className = "type";
    type.textContent = msg.type;
    const pre = doc.createElement("pre");
    pre.className = "json";
    pre.textContent = JSON.stringify(msg);
    li.append(time, type, pre);
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_MESSAGES) {
      list.lastElementChild.remove();
    }
  }

  // Broadcasts are listed newest (largest id) first, each id once, whatever order they
  // arrive in: server-rendered on load, live, or replayed after a reconnect.
  function showBroadcast(msg) {
    const list = $("broadcasts");
    if (!list || list.querySelector(`li[data-broadcast-id="${Number(msg.id)}"]`)) {
      return;
    }
    const level = levelOf(msg);
    const li = doc.createElement("li");
    li.className = `broadcast level-${level}`;
    li.setAttribute("data-broadcast-id", String(msg.id));
    li.setAttribute("data-level", level);
    const text = doc.createElement("p");
    text.className = "broadcast-message";
    text.textContent = msg.message == null ? "" : String(msg.message);
    const sent = doc.createElement("time");
    sent.className = "sent-at";
    sent.setAttribute("datetime", String(msg.sent_at || ""));
    sent.textContent = msg.sent_at ? new Date(msg.sent_at).toLocaleString() : "";
    li.append(text, sent);
    let before = list.firstElementChild;
    while (before && Number(before.getAttribute("data-broadcast-id")) > msg.id) {
      before = before.nextElementSibling;
    }
    list.insertBefore(li, before);
    const empty = $("no-broadcasts");
    if (empty) {
      empty.hidden = true;
    }
  }

  // The gap was larger than the server replays: a reload shows the current state. At most
  // once a minute, so that a server that keeps refusing cannot put the page in a loop.
  function reloadOnce() {
    const last = Number(sessionStorage.getItem("realtime.reloadedAt") || 0);
    if (Date.now() - last < 60000) {
      return;
    }
    sessionStorage.setItem("realtime.reloadedAt", String(Date.now()));
    location.reload();
  }

  const secure = location.protocol === "https:";
  const pageSecure = $("page-secure");
  if (pageSecure) {
    pageSecure.textContent = secure ? "https (secure)" : "http (not secure)";
    pageSecure.setAttribute("data-secure", String(secure));
  }
  const path = body.getAttribute("data-ws-path") || "/ws/";
  const rt = connect({ path, broadcasts: renderedPosition() });
  rt.on("state", (event) => {
    if (event.state === "connecting") renderScheme(event.url);
    setConnection(event);
  });
  rt.on("frame", (msg) => {
    if (msg.type === "welcome") {
      page.welcome = msg;
      renderWelcome(msg);
    } else if (msg.type === "resumed") {
      page.resumes += 1;
    }
    addMessageItem(msg);
  });
  rt.on("broadcast", showBroadcast);
  rt.on("resume_failed", (info) => {
    if (info.topic == null) {
      page.resumeFailed = info;
      reloadOnce();
    }
  });
  renderScheme(rt.state().url);
  $("ping")?.addEventListener("click", () => rt.send({ type: "ping" }));
  window.realtime = {
    state: () => ({ ...page, broadcasts: rt.state().broadcasts }),
    send: (obj) => rt.send(obj),
  };
}

if (typeof document !== "undefined") {
  startPage(document);
}
