/**
 * The example chat's room page (project/demo/templates/demo/room.html), on realtime.mjs.
 *
 * History: the server rendered the room's latest messages and the position they end at
 * (#chat data-epoch, data-offset); the topic is subscribed with `since` that position, so a
 * message sent after the render is replayed once, and after a reconnect realtime.mjs resumes
 * from the last offset shown. The log lists each offset once, in order.
 *
 * Sending: Enter (the form's submit) publishes {text} with a client id of the page's own; the
 * message waits in the outbox ("Sending…") until it arrives in the log as a `message` with
 * that id. Not yet answered when the socket drops, realtime.mjs sends it again with the same
 * id after reconnecting, and the server stores it once. Refused: the reason, in words, in the
 * form's alert, and the text back in the field. `unavailable`, `timeout` and `rate_limited`
 * never reach the page: realtime.mjs sends the message again, same id, until it is answered.
 *
 * Typing: presence meta {typing: true} while the user types, {typing: false} after
 * TYPING_IDLE_MS without a key or when the message is sent. It is state, not an event: a user
 * who arrives sees who is typing, a typist who leaves takes it away with them, and the server
 * coalesces updates (one per second per user at most) without spending the topic's publish
 * rate, which the messages need. Shown as "alice is typing…"; cleared at once when alice's
 * message arrives.
 *
 * window.chat, for tests and the console: state() -> {connection, welcome, offsets, outbox,
 * people, typing}.
 */

import { connect } from "../realtime/realtime.mjs";

export const TYPING_IDLE_MS = 4000;
const NEAR_BOTTOM_PX = 80;

/** Who is typing, in words: "" for nobody. */
export function typingText(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

/** Why a message was not sent, in words, for a rejection of rt.publish(). */
export function refusalText(err) {
  const code = err && err.code;
  switch (code) {
    case "rejected":
      return err.detail || "The room refused this message.";
    case "forbidden":
      return "You may not write in this room.";
    case "rate_limited":
      return "You are sending too fast. Wait a moment, then send it again.";
    case "too_large":
      return "This message is too long.";
    case "unavailable":
      return "The server could not store it just now. Send it again.";
    case "closed":
      return "The connection has ended. Reload the page, then send it again.";
    case "expired":
      return "It waited too long for the connection to come back. Send it again.";
    case "disconnected":
      return "The connection dropped before the server answered. Send it again.";
    default:
      return code ? `The server did not take it (${code}).` : "It could not be sent.";
  }
}

/** The connection in plain words for a state event of realtime.mjs. */
export function connectionText(event, secure, now = Date.now()) {
  switch (event.state) {
    case "open":
      return secure ? "Connected securely" : "Connected (not encrypted)";
    case "paused":
      return "Live messages paused: the server is reconnecting to its message service";
    case "connecting":
      return "Connecting…";
    default:
      break;
  }
  if (event.reconnectIn == null) {
    return "Disconnected. Reload the page to try again.";
  }
  const seconds = Math.ceil(Math.max(0, event.reconnectIn - (now - event.at)) / 1000);
  return seconds > 0 ? `Reconnecting in ${seconds} s` : "Reconnecting…";
}

/** "Just you here", "2 people here". */
export function peopleText(count) {
  if (count <= 1) return count === 1 ? "Just you here." : "Nobody here yet.";
  return `${count} people here.`;
}

/** A message's text: the chat's {text}, a string, or other JSON as JSON. */
export function messageText(data) {
  if (data !== null && typeof data === "object" && typeof data.text === "string") {
    return data.text;
  }
  return typeof data === "string" ? data : JSON.stringify(data);
}

function clientId() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") {
    return crypto.randomUUID();
  }
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
}

function startRoom(doc, root) {
  const $ = (id) => doc.getElementById(id);
  const topic = root.dataset.topic;
  const me = Number(root.dataset.userId);
  const secure = location.protocol === "https:";
  const log = $("log"); // the scrolling live region
  const list = $("message-list"); // the list in it
  const outbox = $("outbox");
  const form = $("send");
  const input = $("message");
  const error = $("send-error");
  const shown = new Map(); // offset -> li
  const pending = new Map(); // client id -> {li, text}
  const quiet = new Set(); // user ids whose message came after their last typing update
  let people = [];
  let state = { state: "connecting" };
  let ticker = null;

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  const titleFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });

  function renderTime(el, date) {
    el.dateTime = date.toISOString();
    el.textContent = timeFormat.format(date);
    el.title = titleFormat.format(date);
  }

  // --- The log -----------------------------------------------------------------------------

  function nearBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
  }

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  function messageItem(msg) {
    const li = doc.createElement("li");
    const sender = msg.from && typeof msg.from === "object" ? msg.from : null;
    li.className = sender && sender.id === me ? "msg mine" : "msg";
    li.dataset.offset = String(msg.offset);
    li.dataset.id = msg.id || "";
    li.dataset.authorId = sender ? String(sender.id) : "";
    const meta = doc.createElement("p");
    meta.className = "msg-meta";
    const author = doc.createElement("span");
    author.className = "author";
    author.textContent = sender ? sender.username : "Announcement";
    const time = doc.createElement("time");
    renderTime(time, new Date());
    meta.append(author, " ", time);
    const text = doc.createElement("p");
    text.className = "msg-text";
    text.textContent = messageText(msg.data);
    li.append(meta, text);
    return li;
  }

  function showMessage(msg) {
    if (msg.ephemeral || typeof msg.offset !== "number" || shown.has(msg.offset)) {
      return;
    }
    const stick = nearBottom();
    const li = messageItem(msg);
    // In offset order: realtime.mjs delivers them so; a later one already shown goes after.
    let before = null;
    for (const [offset, item] of shown) {
      if (offset > msg.offset && (!before || offset < Number(before.dataset.offset))) {
        before = item;
      }
    }
    list.insertBefore(li, before);
    shown.set(msg.offset, li);
    $("no-messages").hidden = true;
    const sender = msg.from && typeof msg.from === "object" ? msg.from : null;
    if (sender) {
      quiet.add(sender.id);
      renderTyping();
    }
    const mine = msg.id && pending.get(msg.id);
    if (mine && sender && sender.id === me) {
      dropPending(msg.id);
    }
    if (stick || mine) {
      scrollDown();
    }
  }

  // --- Sending -----------------------------------------------------------------------------

  function pendingStatus() {
    return state.state === "open" ? "Sending…" : "Waiting for the connection…";
  }

  function addPending(id, text) {
    const li = doc.createElement("li");
    li.dataset.id = id;
    const body = doc.createElement("span");
    body.className = "msg-text";
    body.textContent = text;
    const status = doc.createElement("span");
    status.className = "status";
    status.textContent = pendingStatus();
    li.append(body, status);
    outbox.append(li);
    outbox.hidden = false;
    pending.set(id, { li, text });
  }

  function dropPending(id) {
    const entry = pending.get(id);
    if (entry) {
      entry.li.remove();
      pending.delete(id);
    }
    outbox.hidden = pending.size === 0;
  }

  function renderPending() {
    for (const entry of pending.values()) {
      entry.li.querySelector(".status").textContent = pendingStatus();
    }
  }

  function publish(id, text) {
    rt.publish(topic, { text }, { id }).then(
      () => {
        // Its `message` arrives on its own (live, or replayed after a reconnect) and takes
        // it out of the outbox; one that came first already did.
        const entry = pending.get(id);
        if (entry) entry.li.querySelector(".status").textContent = "Sent";
      },
      (err) => refused(id, err),
    );
  }

  function refused(id, err) {
    const entry = pending.get(id);
    if (!entry) return;
    dropPending(id);
    error.textContent = `Not sent: ${refusalText(err)}`;
    if (input.value === "") {
      input.value = entry.text;
    }
    input.focus();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    error.textContent = "";
    input.value = "";
    setTyping(false);
    const id = clientId();
    addPending(id, text);
    publish(id, text);
  });

  // --- Who is here, who is typing ----------------------------------------------------------

  let typing = false;
  let idle = null;

  function setTyping(on) {
    clearTimeout(idle);
    if (on) {
      idle = setTimeout(() => setTyping(false), TYPING_IDLE_MS);
    }
    if (on !== typing) {
      typing = on;
      rt.setPresence(topic, { typing: on });
    }
  }

  input.addEventListener("input", () => setTyping(input.value.trim() !== ""));

  function typists() {
    return people
      .filter((u) => u.id !== me && u.meta && u.meta.typing === true && !quiet.has(u.id))
      .map((u) => u.username);
  }

  function renderTyping() {
    $("typing").textContent = typingText(typists());
  }

  function renderPeople() {
    const peopleList = $("people");
    peopleList.replaceChildren(
      ...people
        .slice()
        .sort((a, b) => a.username.localeCompare(b.username))
        .map((u) => {
          const li = doc.createElement("li");
          li.dataset.userId = String(u.id);
          li.textContent = u.username;
          if (u.id === me) {
            const you = doc.createElement("span");
            you.className = "you";
            you.textContent = " (you)";
            li.append(you);
          }
          return li;
        }),
    );
    $("people-summary").textContent = peopleText(people.length);
  }

  function onPresence(event) {
    if (event.topic !== topic) return;
    if (event.kind === "presence") {
      quiet.clear();
    } else if (event.kind === "update" && event.user) {
      quiet.delete(event.user.id);
    }
    people = event.users;
    renderPeople();
    renderTyping();
  }

  // --- The connection ----------------------------------------------------------------------

  function renderConnection() {
    const el = $("connection");
    el.dataset.state = state.state;
    $("connection-text").textContent = connectionText(state, secure);
    clearInterval(ticker);
    ticker = state.state === "closed" && state.reconnectIn ? setInterval(renderCountdown, 1000) : null;
  }

  function renderCountdown() {
    $("connection-text").textContent = connectionText(state, secure);
  }

  function ended() {
    $("ended").hidden = false;
    input.disabled = true;
    form.querySelector("button").disabled = true;
  }

  // --- Wiring ------------------------------------------------------------------------------

  for (const li of list.querySelectorAll("li[data-offset]")) {
    shown.set(Number(li.dataset.offset), li);
    const time = li.querySelector("time");
    if (time) renderTime(time, new Date(time.dateTime));
  }
  scrollDown();

  const since = { epoch: root.dataset.epoch, offset: Number(root.dataset.offset) };
  const rt = connect({ path: root.dataset.wsPath || "/ws/" });
  rt.on("state", (event) => {
    state = Object.assign({}, event, { at: Date.now() });
    renderConnection();
    renderPending();
  });
  rt.on("presence", onPresence);
  rt.subscribe(topic, showMessage, {
    since,
    onReset: () => {
      $("missed").hidden = false;
    },
    onEnd: ended,
  });

  window.chat = {
    state: () => ({
      connection: state.state,
      welcome: rt.state().welcome,
      offsets: Array.from(shown.keys()),
      outbox: pending.size,
      people: people.map((u) => u.username),
      typing: typists(),
    }),
  };
}

if (typeof document !== "undefined") {
  const root = document.getElementById("chat");
  if (root) startRoom(document, root);
}
