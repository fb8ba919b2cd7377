/**
 * The page's client: renders what realtime.mjs says into the page's markup (realtime/index.html):
 * the connection in plain words (technical facts under "Connection details"), the broadcasts,
 * the signed-in user's notifications, who is online (staff), and a collapsed log of every
 * message. The connection itself (wss: or ws:, backoff, keep-alive, resume by position, each
 * message once) is realtime.mjs's.
 *
 * New broadcasts and notifications are announced in the page's one polite live region
 * (#announcer; several arriving together in one sentence); nothing else is a live region. Times are in the browser's locale,
 * relative for the last day ("5 minutes ago", refreshed every RELATIVE_REFRESH_MS), the exact
 * time in their title. When the socket is not open, nothing says "secure" or "live".
 *
 * window.realtime, for tests and the console:
 *   state()   -> {connection, closeCode, closeReason, reconnectAt, welcome, broadcasts,
 *                 notifications, online, messageCount, resumes, resumeFailed}
 *   send(obj) -> true if the JSON was sent
 *
 * #connection data-state is exactly one of "connecting", "open", "paused", "closed":
 *   paused   open, but its server lost the channel layer (status live: false)
 *   closed   also during the wait to reconnect; after 1008 the client stops
 */

import { connect } from "./realtime.mjs";

const MAX_MESSAGES = 100;
const MAX_NOTIFICATIONS = 50;
const LEVELS = { info: "Info", success: "Success", warning: "Warning", error: "Error" };
const NO_RECONNECT = [1008];
const USER_TOPIC = "user";
const DAY_MS = 24 * 60 * 60 * 1000;
export const RELATIVE_REFRESH_MS = 30000;
export const RELOAD_AT_MOST_EVERY_MS = 60000;
// Items arriving together (a replay after a reconnect) are announced as one sentence.
const ANNOUNCE_AFTER_MS = 300;

const CLOSE_NAMES = {
  1000: "normal closure",
  1001: "going away",
  1006: "abnormal closure: no close frame",
  1008: "policy violation",
  1009: "message too big",
  1011: "server error",
  1012: "service restart",
  1013: "try again later",
  4001: "signed out or access changed",
};

/** The connection in plain words for a state event of realtime.mjs (pure: tested in node). */
export function connectionText(event, secure, now = Date.now()) {
  switch (event.state) {
    case "open":
      return secure ? "Connected securely" : "Connected (not encrypted)";
    case "paused":
      return "Live updates paused: the server is reconnecting to its message service";
    case "connecting":
      return "Connecting…";
    default:
      break;
  }
  if (NO_RECONNECT.includes(event.code)) {
    return "Disconnected. Reload the page to try again.";
  }
  if (event.reconnectAt != null) {
    const seconds = Math.ceil(Math.max(0, event.reconnectAt - now) / 1000);
    return seconds > 0 ? `Reconnecting in ${seconds} s` : "Reconnecting…";
  }
  return "Disconnected";
}

/** The technical words for a close: "1006 (abnormal closure: no close frame)". */
export function closeText(code, reason) {
  if (code == null) {
    return reason ? String(reason) : "—";
  }
  const name = CLOSE_NAMES[code];
  const details = [name, reason].filter(Boolean).join(": ");
  return details ? `${code} (${details})` : String(code);
}

/** One time format for the page: {text, title} for an ISO time, in `locale`. Relative for the
 * last day ("3 minutes ago"), else date and time; the title is always the exact time. */
export function formatTime(iso, now = Date.now(), locale = undefined) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) {
    return { text: "", title: "" };
  }
  const title = new Intl.DateTimeFormat(locale, { dateStyle: "full", timeStyle: "long" }).format(date);
  const ago = now - date.getTime();
  if (ago >= -60000 && ago < DAY_MS) {
    const relative = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });
    const seconds = Math.round(-Math.max(0, ago) / 1000);
    let text;
    if (seconds > -45) {
      text = relative.format(0, "second");
    } else if (seconds > -3600) {
      text = relative.format(Math.round(seconds / 60), "minute");
    } else {
      text = relative.format(Math.round(seconds / 3600), "hour");
    }
    return { text, title };
  }
  const text = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "short" }).format(date);
  return { text, title };
}

/** Whether the page may reload itself now, `lastReloadAt` its last self-reload (ms). */
export function mayReload(lastReloadAt, now = Date.now()) {
  return !(now - lastReloadAt < RELOAD_AT_MOST_EVERY_MS);
}

/** One announcement for the items that arrived together. */
export function announcement(texts) {
  return texts.length === 1 ? texts[0] : `${texts.length} new updates. Latest: ${texts[texts.length - 1]}`;
}

/** What the page shows of a message on the user's own topic (notifications.displayed()). */
export function notificationShown(data) {
  if (data !== null && typeof data === "object" && typeof data.text === "string") {
    const level = LEVELS[data.level] ? data.level : "info";
    return { text: data.text, level, sentAt: typeof data.sent_at === "string" ? data.sent_at : "" };
  }
  return { text: typeof data === "string" ? data : JSON.stringify(data), level: "info", sentAt: "" };
}

function levelOf(value) {
  return LEVELS[value] ? value : "info";
}

function startPage(doc) {
  const $ = (id) => doc.getElementById(id);
  const body = doc.body;
  const secure = location.protocol === "https:";
  const page = {
    connection: "connecting",
    closeCode: null,
    closeReason: "",
    reconnectAt: null,
    welcome: null,
    notifications: 0,
    online: [],
    messageCount: 0,
    resumes: 0,
    resumeFailed: null,
  };
  let countdown = null;

  function bodyPosition(prefix) {
    const epoch = body.getAttribute(`data-${prefix}-epoch`);
    const offset = body.getAttribute(`data-${prefix}-offset`);
    return epoch && offset !== null && offset !== "" && !Number.isNaN(Number(offset))
      ? { epoch, offset: Number(offset) }
      : undefined;
  }

  let announcing = [];
  function announce(text) {
    const region = $("announcer");
    announcing.push(text);
    if (!region || announcing.length > 1) {
      return;
    }
    region.textContent = ""; // so that the same text twice is announced twice
    setTimeout(() => {
      region.textContent = announcement(announcing);
      announcing = [];
    }, ANNOUNCE_AFTER_MS);
  }

  // --- Times -----------------------------------------------------------------------------

  function renderTime(el) {
    const { text, title } = formatTime(el.getAttribute("datetime"));
    if (text) {
      el.textContent = text;
      el.title = title;
    }
  }

  function renderAllTimes() {
    doc.querySelectorAll("time[datetime]").forEach(renderTime);
  }

  function timeElement(iso) {
    const time = doc.createElement("time");
    time.className = "sent-at";
    time.setAttribute("datetime", iso);
    renderTime(time);
    return time;
  }

  // --- Connection ------------------------------------------------------------------------

  function setFact(key, value) {
    const el = doc.querySelector(`#details dd[data-key="${key}"]`);
    if (el) {
      el.textContent = value == null || value === "" ? "—" : String(value);
    }
  }

  function renderFacts() {
    const live = page.connection === "open" || page.connection === "paused";
    const welcome = live ? page.welcome : null;
    setFact("state", page.connection);
    setFact("tls-version", welcome?.tls?.version || (live ? "none (not encrypted)" : ""));
    setFact("tls-cipher", welcome?.tls?.cipher);
    setFact("worker", welcome?.worker);
    setFact("user", welcome ? welcome.user || "not signed in" : "");
    setFact("close", page.closeCode != null || page.closeReason ? closeText(page.closeCode, page.closeReason) : "");
  }

  function setConnection(event) {
    page.connection = event.state;
    if (event.state === "closed") {
      page.closeCode = event.code ?? null;
      page.closeReason = event.reason || "";
    }
    page.reconnectAt = event.reconnectIn != null ? Date.now() + event.reconnectIn : null;
    const render = () => {
      const el = $("connection");
      if (el) {
        el.setAttribute("data-state", event.state);
        $("connection-text").textContent = connectionText({ ...event, reconnectAt: page.reconnectAt }, secure);
      }
    };
    render();
    clearInterval(countdown);
    countdown = page.reconnectAt != null ? setInterval(render, 1000) : null;
    renderFacts();
    const ping = $("ping");
    if (ping) {
      ping.disabled = event.state !== "open" && event.state !== "paused";
    }
  }

  function renderSocketUrl(url) {
    const scheme = /^wss:/i.test(url) ? "wss" : "ws";
    $("connection")?.setAttribute("data-scheme", scheme);
    const el = $("ws-url");
    if (el) {
      el.textContent = url;
    }
  }

  // --- The log -----------------------------------------------------------------------------

  function addLogItem(msg) {
    page.messageCount += 1;
    const list = $("messages");
    if (!list) {
      return;
    }
    const li = doc.createElement("li");
    li.className = "msg";
    li.setAttribute("data-type", msg.type);
    const type = doc.createElement("span");
    type.className = "type";
    type.textContent = msg.type;
    const pre = doc.createElement("pre");
    pre.textContent = JSON.stringify(msg);
    li.append(timeElement(new Date().toISOString()), type, pre);
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_MESSAGES) {
      list.lastElementChild.remove();
    }
  }

  // --- Cards: broadcasts and notifications ------------------------------------------------

  function card(kind, level, text, iso) {
    const li = doc.createElement("li");
    li.className = `card ${kind} level-${level}`;
    li.setAttribute("data-level", level);
    const label = doc.createElement("p");
    label.className = "level-label";
    const icon = doc.createElement("span");
    icon.className = "level-icon";
    icon.setAttribute("aria-hidden", "true");
    label.append(icon, LEVELS[level]);
    const p = doc.createElement("p");
    p.className = "card-text";
    p.textContent = text;
    li.append(label, p);
    if (iso) {
      li.append(timeElement(iso));
    }
    return li;
  }

  // A long text is clamped to a few lines, with a button to show all of it.
  function clampIfLong(li) {
    const text = li.querySelector(".card-text");
    if (!text || li.querySelector(".show-more")) {
      return;
    }
    text.classList.add("clamped");
    if (text.scrollHeight <= text.clientHeight + 1) {
      text.classList.remove("clamped");
      return;
    }
    text.id = text.id || `text-${Math.random().toString(36).slice(2)}`;
    const button = doc.createElement("button");
    button.type = "button";
    button.className = "show-more link-button";
    button.setAttribute("aria-controls", text.id);
    button.setAttribute("aria-expanded", "false");
    button.textContent = "Show more";
    button.addEventListener("click", () => {
      const expanded = text.classList.toggle("clamped") === false;
      button.setAttribute("aria-expanded", String(expanded));
      button.textContent = expanded ? "Show less" : "Show more";
    });
    text.after(button);
  }

  // Broadcasts are listed newest (largest id) first, each id once, whatever order they
  // arrive in: server-rendered on load, live, or replayed after a reconnect.
  function showBroadcast(msg) {
    const list = $("broadcasts");
    if (!list || list.querySelector(`li[data-broadcast-id="${Number(msg.id)}"]`)) {
      return;
    }
    const level = levelOf(msg.level);
    const text = msg.message == null ? "" : String(msg.message);
    const li = card("broadcast", level, text, msg.sent_at ? String(msg.sent_at) : "");
    li.setAttribute("data-broadcast-id", String(msg.id));
    let before = list.firstElementChild;
    while (before && Number(before.getAttribute("data-broadcast-id")) > msg.id) {
      before = before.nextElementSibling;
    }
    list.insertBefore(li, before);
    clampIfLong(li);
    $("no-broadcasts")?.setAttribute("hidden", "");
    announce(`${LEVELS[level]} broadcast: ${text}`);
  }

  function showNotification(msg) {
    const list = $("notifications");
    if (!list || list.querySelector(`li[data-offset="${Number(msg.offset)}"]`)) {
      return;
    }
    const shown = notificationShown(msg.data);
    const li = card("notification", shown.level, shown.text, shown.sentAt || new Date().toISOString());
    li.setAttribute("data-offset", String(msg.offset));
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_NOTIFICATIONS) {
      list.lastElementChild.remove();
    }
    clampIfLong(li);
    page.notifications += 1;
    $("no-notifications")?.setAttribute("hidden", "");
    announce(`Notification: ${shown.text}`);
  }

  // --- Who's online (staff) ----------------------------------------------------------------

  function showOnline(event) {
    page.online = event.users.map((u) => u.username).sort((a, b) => a.localeCompare(b));
    const list = $("online");
    if (!list) {
      return;
    }
    list.replaceChildren(
      ...page.online.map((name) => {
        const li = doc.createElement("li");
        li.textContent = name;
        return li;
      }),
    );
    const count = page.online.length;
    $("online-summary").textContent = count === 1 ? "1 person is signed in and online now:" : `${count} people are signed in and online now:`;
  }

  function offline() {
    const summary = $("online-summary");
    if (summary && page.connection !== "open" && page.connection !== "paused") {
      summary.textContent = "Not known while disconnected.";
      $("online")?.replaceChildren();
    }
  }

  // The gap was larger than the server replays: a reload shows the current state. At most
  // once a minute, so that a server that keeps refusing cannot put the page in a loop; within
  // that minute the page says that something is missing instead.
  function reloadOnce() {
    const last = Number(sessionStorage.getItem("realtime.reloadedAt") || 0);
    if (!mayReload(last)) {
      $("missed")?.removeAttribute("hidden");
      return;
    }
    sessionStorage.setItem("realtime.reloadedAt", String(Date.now()));
    location.reload();
  }

  // --- Wiring ----------------------------------------------------------------------------

  doc.querySelectorAll("#broadcasts li, #notifications li").forEach(clampIfLong);
  renderAllTimes();
  setInterval(renderAllTimes, RELATIVE_REFRESH_MS);

  const path = body.getAttribute("data-ws-path") || "/ws/";
  const rt = connect({ path, broadcasts: bodyPosition("broadcasts"), user: bodyPosition("user") });
  rt.on("state", (event) => {
    if (event.state === "connecting") renderSocketUrl(event.url);
    setConnection(event);
    offline();
  });
  rt.on("frame", (msg) => {
    if (msg.type === "welcome") {
      page.welcome = msg;
      renderFacts();
    } else if (msg.type === "resumed") {
      page.resumes += 1;
    }
    addLogItem(msg);
  });
  rt.on("broadcast", showBroadcast);
  if ($("notifications")) {
    rt.subscribe(USER_TOPIC, showNotification, { onReset: reloadOnce });
  }
  const onlineTopic = body.getAttribute("data-online-topic");
  if (onlineTopic) {
    rt.subscribe(onlineTopic, () => {});
    rt.on("presence", (event) => {
      if (event.topic === onlineTopic) showOnline(event);
    });
  }
  rt.on("resume_failed", (info) => {
    if (info.topic == null) {
      page.resumeFailed = info;
      reloadOnce();
    }
  });
  renderSocketUrl(rt.state().url);
  $("ping")?.addEventListener("click", () => rt.send({ type: "ping" }));
  window.realtime = {
    state: () => ({ ...page, broadcasts: rt.state().broadcasts }),
    send: (obj) => rt.send(obj),
  };
}

if (typeof document !== "undefined") {
  startPage(document);
}
