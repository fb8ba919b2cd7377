/**
 * admin_live.mjs: the admin's live view (admin/realtime/live.html). Subscribes this page's
 * WebSocket to the staff-only topic and, on each `stats` frame, replaces the rows of every
 * table with the new picture (realtime/ops/live_stats.py). Text only: nothing the
 * server sends is read as HTML.
 */
import { connect } from "./realtime.mjs";

const root = document.getElementById("live");
const state = document.getElementById("live-state");

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) {
    td.className = className;
  }
  return td;
}

function timeCell(iso) {
  const td = document.createElement("td");
  const time = document.createElement("time");
  time.dateTime = iso || "";
  const when = iso ? new Date(iso) : null;
  time.textContent = when && !Number.isNaN(when.getTime()) ? when.toLocaleTimeString() : "";
  time.title = when ? when.toLocaleString() : "";
  td.append(time);
  return td;
}

function fill(tableId, items, columns, empty) {
  const body = document.querySelector(`#${tableId} tbody`);
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    tr.append(...columns.map((column) => column(item)));
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(empty);
    td.colSpan = columns.length;
    tr.append(td);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function latency(ms) {
  return typeof ms === "number" ? `${ms} ms` : "—";
}

export function render(data) {
  const none = "No worker has reported.";
  fill("live-hosts", data.hosts || [], [(h) => cell(h.host), (h) => cell(h.sockets, "number")], none);
  fill("live-workers", data.workers || [], [
    (w) => cell(w.host), (w) => cell(w.worker), (w) => cell(w.sockets, "number"),
  ], none);
  fill("live-messages", data.messages || [], [
    (m) => timeCell(m.published_at), (m) => cell(m.kind), (m) => cell(m.to),
    (m) => cell(m.what, "what"), (m) => cell(m.sockets, "number"),
    (m) => cell(latency(m.latency_ms), "number"),
  ], "Nothing was published in the last hour.");
  fill("live-refused", data.refused || [], [
    (r) => cell(r.reason), (r) => cell(r.count, "number"),
  ], "None.");
}

function show(text, kind) {
  state.textContent = text;
  state.dataset.state = kind;
}

if (root) {
  const topic = root.dataset.topic;
  const rt = connect({ path: root.dataset.wsPath });
  rt.subscribe(topic, () => {}, {
    onEnd() {
      show("Live updates ended: this account may no longer watch them.", "closed");
    },
  });
  rt.on("frame", (msg) => {
    if (msg.type === "stats" && msg.topic === topic && msg.data) {
      render(msg.data);
      show(`Live: updated ${new Date(msg.data.time).toLocaleTimeString()}`, "open");
    }
  });
  rt.on("state", (s) => {
    if (s.state !== "open") {
      show("Not live: reconnecting…", "closed");
    }
  });
}
