/**
 * live_html.mjs: live HTML, the `<realtime-stream>` element (a browser ES module, no build
 * step, no dependencies, nothing a strict CSP forbids). The server renders fragments with
 * Django's templates and sends them on a topic (realtime.fragments); this element subscribes
 * the page to that topic and applies each one to the DOM. `{% realtime_stream %}` renders it:
 *
 *   <realtime-stream topic="orders.board" signed="TOKEN" since="EPOCH:OFFSET" region="board"
 *                    reload-url="/orders/board/" ws-path="/ws/" hidden></realtime-stream>
 *
 * Attributes (read when the element is connected to the document):
 *   topic       the topic to follow (required)
 *   signed      the server's signed stream name: subscribes without the topic's authorize rule
 *   since       "EPOCH:OFFSET": the topic's position when the page rendered; what was sent
 *               after it is replayed once, so put the element before the markup it keeps live
 *   region      the id of an element around the live markup (and this element), fetched
 *               again when the page can no longer catch up (below)
 *   reload-url  where the fresh region is fetched (default: the page's own URL)
 *   ws-path     the WebSocket path of the page's one shared connection (the first element's)
 *   state       set by the element: "connecting" | "subscribed" | "closed" | "ended"
 *
 * A fragment is a topic message with event "html" and data {action, target, html}: action is
 * one of ACTIONS, target an element id (looked up with getElementById only: no selectors from
 * data), html a string (none for remove). The html is parsed by a <template> element, which
 * never runs its scripts. append, prepend, before and after first remove any element of the
 * document with the id of one of the fragment's top-level elements, so that a fragment replayed
 * or moved never leaves a copy. A fragment whose target is missing changes nothing. Then
 * `realtime:fragment` (bubbles, detail {action, target, topic, offset}) is dispatched on the
 * element whose children changed: the target for append, prepend and update, its parent for
 * replace, before and after, the document for remove.
 *
 * Only the server's fragments are applied: a message with `from` (a client's publish) never is.
 *
 * When history is gone (`resume_failed`) or the signed name no longer holds (onEnd
 * "stream_expired": too old, or the user or their rights changed), the region is replaced by
 * the same region of a fresh render (with a fresh element, since and token), fetched from
 * reload-url (on the page's origin only) without the HTTP cache, at most once every
 * REGION_AT_MOST_EVERY_MS per topic (a later one waits); fragments that arrive during the fetch
 * are applied to the fresh region too when they are past its position. Without a region, or
 * when the fetch fails, the page reloads, at most once a minute per tab (sessionStorage). Any other end (forbidden, ...), or a reload refused by that guard: state
 * "ended" and a `realtime:stream-end` event (bubbles, detail {topic, reason}).
 */

import { connect } from "./realtime.mjs";

export const ACTIONS = ["append", "prepend", "replace", "update", "remove", "before", "after"];
const DEDUPLICATED = ["append", "prepend", "before", "after"];
const MAX_ID_LENGTH = 200;
const RELOAD_KEY = "realtime.liveHtmlReloadAt";
export const RELOAD_AT_MOST_EVERY_MS = 60 * 1000;
export const REGION_AT_MOST_EVERY_MS = 10 * 1000;
const REGION_KEY = "realtime.liveHtmlRegionAt:";

let shared = null;

/** The page's one connection, opened by the first call (a later `path` is ignored). */
export function connection(path) {
  shared = shared || connect({ path: path || "/ws/" });
  return shared;
}

/** "EPOCH:OFFSET" -> {epoch, offset}, or null when the text is not a position. */
export function parseSince(text) {
  const value = typeof text === "string" ? text.trim() : "";
  const colon = value.lastIndexOf(":");
  const epoch = value.slice(0, colon);
  const offset = value.slice(colon + 1);
  if (colon < 1 || !/^\d+$/.test(offset)) {
    return null;
  }
  return { epoch, offset: Number(offset) };
}

/** Whether a message's data is a fragment this element applies. */
export function isFragment(data) {
  if (data === null || typeof data !== "object") {
    return false;
  }
  const { action, target, html } = data;
  const validTarget =
    typeof target === "string" && target.length <= MAX_ID_LENGTH && /^\S+$/.test(target);
  return ACTIONS.includes(action) && validTarget && (action === "remove" || typeof html === "string");
}

/**
 * Whether a topic message is a fragment the server sent: event "html" and no `from` (a client's
 * publish has one, and the server refuses "html" from clients: never trusted as markup).
 */
export function isServerFragment(message) {
  return Boolean(message) && message.event === "html" && !("from" in message);
}

/** Whether `url` (relative to `base`) is on `base`'s origin: the only place a region comes from. */
export function sameOrigin(url, base) {
  try {
    return new URL(url, base).origin === new URL(base).origin;
  } catch (err) {
    return false;
  }
}

/**
 * Milliseconds to wait before fetching a region again (0: now, and the fetch is recorded), so
 * that a region that keeps failing (served from a cache, say) is fetched at most once every
 * REGION_AT_MOST_EVERY_MS.
 */
export function regionWait(storage, key, now = Date.now()) {
  try {
    const last = Number(storage.getItem(key));
    const wait = last ? last + REGION_AT_MOST_EVERY_MS - now : 0;
    if (wait > 0) {
      return wait;
    }
    storage.setItem(key, String(now));
  } catch (err) {
    // no storage: nothing to pace by, and a fetch is not a reload loop's harm
  }
  return 0;
}

/**
 * Applies one fragment to `doc`. Returns the node to dispatch `realtime:fragment` on, or null
 * when nothing changed (not a fragment, or its target is missing).
 */
export function applyFragment(doc, data) {
  const target = isFragment(data) ? doc.getElementById(data.target) : null;
  if (!target) {
    return null;
  }
  const { action } = data;
  if (action === "remove") {
    target.remove();
    return doc;
  }
  const content = parse(doc, data.html);
  if (DEDUPLICATED.includes(action)) {
    removeExisting(doc, content, target);
  }
  const parent = target.parentNode || doc;
  const insert = {
    append: () => target.append(content),
    prepend: () => target.prepend(content),
    before: () => target.before(content),
    after: () => target.after(content),
    replace: () => target.replaceWith(content),
    update: () => target.replaceChildren(content),
  };
  insert[action]();
  return ["append", "prepend", "update"].includes(action) ? target : parent;
}

function parse(doc, html) {
  const template = doc.createElement("template");
  template.innerHTML = html;
  return template.content;
}

// An element the target is inside of is kept: removing it would take the target along.
function removeExisting(doc, content, target) {
  for (const element of Array.from(content.children)) {
    const existing = element.id ? doc.getElementById(element.id) : null;
    if (existing && !existing.contains(target)) {
      existing.remove();
    }
  }
}

/** Whether the page may reload now (none in the last minute); records the reload if so. */
export function mayReload(storage, now = Date.now()) {
  try {
    const last = Number(storage.getItem(RELOAD_KEY));
    if (last && now - last < RELOAD_AT_MOST_EVERY_MS) {
      return false;
    }
    storage.setItem(RELOAD_KEY, String(now));
    return true;
  } catch (err) {
    return false; // no storage: no guard against a reload loop, so no reload
  }
}

/** The fresh render's element with id `region` (from reload-url or the page), or null. */
async function freshRegion(url, region) {
  if (!sameOrigin(url, location.href)) {
    throw new Error("reload-url is not on this page's origin: " + url);
  }
  const response = await fetch(url, {
    credentials: "same-origin",
    cache: "no-store", // a cached region would carry an old position and token
    headers: { Accept: "text/html" },
  });
  if (!response.ok) {
    return null;
  }
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  return fresh.getElementById(region);
}

function defineElement() {
  class RealtimeStream extends HTMLElement {
    #stop = null;
    #missed = null; // while a fresh region is fetched: the fragments applied meanwhile

    connectedCallback() {
      const topic = this.getAttribute("topic");
      if (!topic || this.#stop) {
        return;
      }
      const rt = connection(this.getAttribute("ws-path"));
      this.setAttribute("state", "connecting");
      const unsubscribe = rt.subscribe(topic, (message) => this.apply(message), {
        since: parseSince(this.getAttribute("since")) || undefined,
        signed: this.getAttribute("signed") || undefined,
        onReset: () => this.reloadRegion("resume_failed"),
        onEnd: (reason) => this.ended(reason),
      });
      const offState = rt.on("state", (state) => this.socketState(state));
      const offFrame = rt.on("frame", (frame) => {
        if (frame.type === "subscribed" && frame.topic === topic) {
          this.setState("subscribed");
        }
      });
      this.#stop = () => [unsubscribe, offState, offFrame].forEach((off) => off());
      this.socketState(rt.state());
    }

    disconnectedCallback() {
      if (this.#stop) {
        this.#stop();
        this.#stop = null;
      }
    }

    setState(state) {
      if (this.getAttribute("state") !== "ended") {
        this.setAttribute("state", state);
      }
    }

    // Subscribed until the socket closes; on a new socket, connecting until its `subscribed`.
    // The server subscribes a signed-in socket to "user" itself: no `subscribed` may come.
    socketState({ state, welcome }) {
      const ownTopic = this.getAttribute("topic") === "user" && welcome && welcome.user_topic;
      if (state === "closed") {
        this.setState("closed");
      } else if (state === "open" && ownTopic) {
        this.setState("subscribed");
      } else if (state === "connecting" || this.getAttribute("state") === "closed") {
        this.setState("connecting");
      }
    }

    apply(message) {
      if (!isServerFragment(message)) {
        return;
      }
      if (this.#missed) {
        this.#missed.push(message);
      }
      const changed = applyFragment(document, message.data);
      if (changed) {
        const { action, target } = message.data;
        const detail = { action, target, topic: message.topic, offset: message.offset };
        changed.dispatchEvent(new CustomEvent("realtime:fragment", { bubbles: true, detail }));
      }
    }

    ended(reason) {
      if (reason === "stream_expired") {
        this.reloadRegion(reason);
        return;
      }
      this.end(reason);
    }

    end(reason) {
      this.setState("ended");
      const detail = { topic: this.getAttribute("topic"), reason };
      this.dispatchEvent(new CustomEvent("realtime:stream-end", { bubbles: true, detail }));
    }

    async reloadRegion(reason) {
      const id = this.getAttribute("region");
      if (!id || !document.getElementById(id)) {
        this.reloadPage(reason);
        return;
      }
      const wait = regionWait(globalThis.sessionStorage, REGION_KEY + this.getAttribute("topic"));
      if (wait > 0) {
        setTimeout(() => this.isConnected && this.reloadRegion(reason), wait);
        return;
      }
      this.#missed = [];
      try {
        const fresh = await freshRegion(this.getAttribute("reload-url") || location.href, id);
        if (fresh) {
          this.replaceRegion(document.getElementById(id), document.adoptNode(fresh));
          return;
        }
      } catch (err) {
        console.error("realtime-stream: reloading the region failed:", err);
      } finally {
        this.#missed = null;
      }
      this.reloadPage(reason);
    }

    // Fragments that came while the region was fetched, past the position the fresh one was
    // rendered at, are applied to it again: the socket may not replay them (topic "user").
    replaceRegion(region, fresh) {
      const missed = this.#missed || [];
      const stream = fresh.querySelector("realtime-stream");
      const since = stream ? parseSince(stream.getAttribute("since")) : null;
      region.replaceWith(fresh);
      for (const message of missed) {
        if (!since || typeof message.offset !== "number" || message.offset > since.offset) {
          applyFragment(document, message.data);
        }
      }
    }

    reloadPage(reason) {
      if (mayReload(globalThis.sessionStorage)) {
        location.reload();
      } else {
        this.end(reason);
      }
    }
  }
  customElements.define("realtime-stream", RealtimeStream);
}

if (globalThis.customElements && !globalThis.customElements.get("realtime-stream")) {
  defineElement();
}
