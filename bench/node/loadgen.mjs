/**
 * The load generator of bench/run.py: WebSocket clients in one Node process (the `ws`
 * package), fast enough that the servers, not the client, are what is measured.
 *
 *   node loadgen.mjs echo --url U --origin O [--ca CA.pem] [--connections 50] \
 *       [--message '{"type":"ping"}'] [--reply '{"type":"pong"}'] [--duration 3] [--warmup 1]
 *   node loadgen.mjs fanout --url U[,U2...] --origin O [--ca CA.pem] --sockets N \
 *       [--concurrency 100] [--subscribe TOPIC] [--deflate] [--wire-bytes]
 *   node loadgen.mjs publish --url U --origin O [--ca CA.pem] [--cookie C] [--protocol P] \
 *       --topic T --first-seq S --count N --rate R [--ack]
 *
 * Each mode prints JSON lines on stdout. `echo` prints one result and exits.
 * `fanout` opens N sockets (spread round-robin over the URLs), each subscribed to TOPIC when
 * given (the project's protocol: it counts as open once `subscribed` came back), prints
 * {"event":"opened"} (with how many sockets negotiated permessage-deflate, and its parameters),
 * then takes JSON commands on stdin, one a line:
 *   {"cmd":"mark"}  note the time and this process's CPU use, print {"event":"marked"}
 *       (sent just before a broadcast: the client's CPU during delivery is counted from here)
 *   {"cmd":"expect","seqs":[3,4],"timeout":20}  wait until every open socket has received
 *       the broadcasts with these sequence numbers (or the timeout), print {"event":"round"}
 *       with latencies overall and, for the project (whose welcome names the worker), per
 *       server worker; with "raw":true also every latency, per seq and per worker, and each
 *       seq's send and last arrival times, so that bench/merge.py can merge the rounds of
 *       several processes
 *   {"cmd":"bytes"}  print {"event":"bytes"} with the bytes received so far over all sockets:
 *       WebSocket frames as read (after TLS decryption, before inflating) and, with
 *       --wire-bytes, the TCP payload (TLS records included)
 *   {"cmd":"close"}  close every socket, print {"event":"closed"} and exit.
 *
 * `publish` opens one socket (sending Cookie C, offering subprotocol P) and sends N messages,
 * R a second on a fixed schedule, each the project's client publish
 * (`{"type":"publish","topic":T,"data":"bench seq=S sent=... xxx","id":"bench-S"}`), the
 * marker's time taken just before `send()`. With --ack it waits for each one's `published` (or
 * error) and reports the publish -> ack latency; then prints one result (with the user, protocol
 * and worker the project's welcome named) and exits. Sent to the
 * Node server's `/broadcast` path, the same text goes verbatim to every other socket, where a
 * `fanout` process sees the marker as it sees a broadcast's.
 *
 * A broadcast is recognised by `bench seq=N sent=T` anywhere in the frame's text, T being the
 * sender's wall clock in milliseconds (time.time_ns() / 1e6 in Python); latency is the
 * arrival time on this process's wall clock (performance.timeOrigin + performance.now())
 * minus T. Both clocks are the same machine's.
 *
 * Handshakes per second are measured by bench/handshakes.py instead: Node's TLS client costs
 * about 1.1 ms of CPU per new connection, too much to load a server from one core.
 *
 * Certificates are verified against --ca only (the run's throw-away dev CA) with the server
 * name "localhost"; nothing here turns verification off. No permessage-deflate is offered,
 * so every server sends plain frames (uvicorn would otherwise compress), except with
 * --deflate: then each socket offers what a Node `ws` client offers by default
 * (`permessage-deflate; client_max_window_bits`). --wire-bytes puts TLS over a TCP socket of
 * this process's own, whose bytesRead counts what came over the wire: a TLS socket's own
 * bytesRead counts the decrypted bytes.
 */

import { readFileSync } from 'node:fs';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import tls from 'node:tls';
import { parseArgs } from 'node:util';

import WebSocket from 'ws';

const BENCH_PATTERN = /bench seq=(\d+) sent=(\d+(?:\.\d+)?)/;

const { positionals, values: args } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string' },
    origin: { type: 'string' },
    ca: { type: 'string' },
    concurrency: { type: 'string' },
    duration: { type: 'string', default: '3' },
    warmup: { type: 'string' },
    connections: { type: 'string', default: '50' },
    message: { type: 'string', default: '{"type":"ping"}' },
    reply: { type: 'string' },
    sockets: { type: 'string' },
    subscribe: { type: 'string' },
    deflate: { type: 'boolean', default: false },
    'wire-bytes': { type: 'boolean', default: false },
    cookie: { type: 'string' },
    protocol: { type: 'string' },
    topic: { type: 'string' },
    'first-seq': { type: 'string', default: '0' },
    count: { type: 'string', default: '100' },
    rate: { type: 'string', default: '20' },
    ack: { type: 'boolean', default: false },
  },
});

const CA = args.ca ? readFileSync(args.ca) : undefined;

function now() {
  return performance.timeOrigin + performance.now();
}

function emit(object) {
  process.stdout.write(`${JSON.stringify(object)}\n`);
}

function percentile(sorted, fraction) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
}

function round3(value) {
  return value === null ? null : Math.round(value * 1000) / 1000;
}

/** CPU this process used between two process.cpuUsage() readings, in % of one core. */
function cpuPercent(before, seconds) {
  const used = process.cpuUsage(before);
  return round3(((used.user + used.system) / 1e6 / seconds) * 100);
}

/**
 * A createConnection for ws that puts TLS (for wss) over a TCP socket of its own, kept as
 * `counted.wire`: that socket's bytesRead is what came over the wire, TLS records included.
 */
function wireCounted(counted, secure) {
  return (options) => {
    const socket = net.connect(options.port, options.host);
    counted.wire = socket;
    return secure ? tls.connect({ ...options, path: undefined, socket }) : socket;
  };
}

/**
 * Open one WebSocket; resolves to it once open. `onMessage` listens from the start: a message
 * sent right after the upgrade (the project's welcome) can arrive before the promise resolves.
 */
function open(
  url,
  { handshakeTimeout = 60000, onMessage, deflate = false, wire = false, protocols, headers } = {},
) {
  const options = {
    origin: args.origin,
    perMessageDeflate: deflate,
    handshakeTimeout,
    headers,
  };
  const secure = url.startsWith('wss:');
  if (secure) {
    options.ca = CA;
    options.servername = 'localhost';
  }
  const counted = {};
  if (wire) options.createConnection = wireCounted(counted, secure);
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols ?? [], options);
    ws.counted = counted;
    if (onMessage) ws.on('message', onMessage);
    ws.once('open', () => {
      ws.removeAllListeners('error');
      ws.on('error', () => {});
      resolve(ws);
    });
    ws.once('error', reject);
  });
}

/** Close a socket with the closing handshake; resolves when it is closed (5 s at most). */
function closeSocket(ws) {
  return new Promise((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) {
      resolve();
      return;
    }
    const timer = setTimeout(() => {
      ws.terminate();
      resolve();
    }, 5000);
    ws.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    ws.close(1000);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- echo --------------------------------------------------------------------------------

/** N connections, each sending the next message as soon as the reply to the last arrives. */
async function echo() {
  const connections = Number(args.connections);
  const duration = Number(args.duration) * 1000;
  const warmup = Number(args.warmup ?? 1) * 1000;
  const message = args.message;
  const reply = args.reply ?? message;
  const sockets = [];
  for (let i = 0; i < connections; i += 10) {
    const batch = Math.min(10, connections - i);
    sockets.push(...(await Promise.all(Array.from({ length: batch }, () => open(args.url)))));
  }
  await sleep(300); // let welcome messages (the project's) arrive before the clock starts
  let counting = false;
  let replies = 0;
  let unexpected = 0;
  let closed = 0;
  let running = true;
  for (const ws of sockets) {
    ws.on('message', (data) => {
      if (data.toString() !== reply) {
        unexpected += 1;
        return;
      }
      if (counting) replies += 1;
      if (running) ws.send(message);
    });
    ws.on('close', () => (closed += 1));
    ws.send(message);
  }
  await sleep(warmup);
  counting = true;
  const cpuBefore = process.cpuUsage();
  const started = now();
  await sleep(duration);
  counting = false;
  const seconds = (now() - started) / 1000;
  const clientCpu = cpuPercent(cpuBefore, seconds);
  const closedEarly = closed;
  running = false;
  await sleep(200);
  await Promise.all(sockets.map(closeSocket));
  emit({
    mode: 'echo',
    connections,
    message_bytes: Buffer.byteLength(message),
    reply_bytes: Buffer.byteLength(reply),
    seconds: round3(seconds),
    replies,
    per_second: round3(replies / seconds),
    unexpected,
    closed_early: closedEarly,
    client_cpu_percent: clientCpu,
  });
}

// --- fanout ------------------------------------------------------------------------------

class Receivers {
  constructor() {
    this.sockets = [];
    this.open = 0;
    this.closedEarly = 0;
    this.arrivals = new Map(); // seq -> {sent, latencies: [], last, bytes}
    this.duplicates = 0;
    this.waiters = [];
    this.deflated = 0; // sockets that negotiated permessage-deflate
    this.deflateParams = new Map(); // its negotiated parameters -> sockets
  }

  /** Bytes received so far over every socket, also the closed ones (their counts stay). */
  bytesRead() {
    let frames = 0;
    let wire = 0;
    for (const ws of this.sockets) {
      frames += ws._socket?.bytesRead ?? 0;
      wire += ws.counted.wire?.bytesRead ?? 0;
    }
    return { frame_bytes: frames, wire_bytes: args['wire-bytes'] ? wire : null };
  }

  /** A message listener for one socket, to give to open() before the socket exists. */
  listener() {
    const seen = new Set();
    const socket = { worker: null };
    return (data) => this.onMessage(data, seen, socket);
  }

  add(ws) {
    this.sockets.push(ws);
    this.open += 1;
    if (ws.extensions.includes('permessage-deflate')) {
      this.deflated += 1;
      const params = Object.entries(ws._extensions['permessage-deflate']?.params ?? {})
        .map(([name, value]) => (value === true ? name : `${name}=${value}`))
        .join('; ');
      this.deflateParams.set(params, (this.deflateParams.get(params) ?? 0) + 1);
    }
    ws.on('close', () => {
      this.open -= 1;
      if (!this.closing) this.closedEarly += 1;
    });
  }

  onMessage(data, seen, socket) {
    const arrived = now();
    const text = data.toString();
    const match = BENCH_PATTERN.exec(text);
    if (!match) {
      if (socket.worker === null && text.startsWith('{"type":"welcome"')) {
        socket.worker = JSON.parse(text).worker ?? null; // the project's server process
      }
      return;
    }
    const seq = Number(match[1]);
    if (seen.has(seq)) {
      this.duplicates += 1;
      return;
    }
    seen.add(seq);
    let entry = this.arrivals.get(seq);
    if (!entry) {
      entry = { sent: Number(match[2]), latencies: [], last: 0, bytes: data.length };
      entry.byWorker = new Map();
      this.arrivals.set(seq, entry);
    }
    entry.latencies.push(arrived - entry.sent);
    if (socket.worker !== null) {
      if (!entry.byWorker.has(socket.worker)) entry.byWorker.set(socket.worker, []);
      entry.byWorker.get(socket.worker).push(arrived - entry.sent);
    }
    entry.last = Math.max(entry.last, arrived);
    for (const waiter of this.waiters) waiter();
  }

  complete(seqs, expected) {
    return seqs.every((seq) => (this.arrivals.get(seq)?.latencies.length ?? 0) >= expected);
  }

  /** Resolves when every seq reached `expected` sockets, or after `timeout` ms. */
  wait(seqs, expected, timeout) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((waiter) => waiter !== check);
        resolve();
      };
      const check = () => {
        if (this.complete(seqs, expected)) done();
      };
      const timer = setTimeout(done, timeout);
      this.waiters.push(check);
      check();
    });
  }
}

async function openMany(urls, count, concurrency, receivers) {
  let next = 0;
  let failed = 0;
  let firstError = null;
  async function worker() {
    while (next < count) {
      const url = urls[next % urls.length];
      next += 1;
      try {
        const ws = await open(url, {
          onMessage: receivers.listener(),
          deflate: args.deflate,
          wire: args['wire-bytes'],
        });
        if (args.subscribe) await subscribe(ws, args.subscribe);
        receivers.add(ws);
      } catch (error) {
        failed += 1;
        firstError ??= String(error?.message ?? error);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return { failed, firstError };
}

/** Subscribe a project socket to a topic; resolves on `subscribed`, rejects on anything else
 * about it (an error) or after 30 s. */
function subscribe(ws, topic) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`no answer to subscribe ${topic}`)), 30000);
    const onMessage = (data) => {
      const text = data.toString();
      if (text.startsWith('{"type":"subscribed"')) done(null);
      else if (text.startsWith('{"type":"error"')) done(new Error(text));
    };
    function done(error) {
      clearTimeout(timer);
      ws.off('message', onMessage);
      if (error) reject(error);
      else resolve();
    }
    ws.on('message', onMessage);
    ws.send(JSON.stringify({ type: 'subscribe', topic }));
  });
}

/** p50, p99 and max latency of one broadcast at each server worker's sockets. */
function workerStats(byWorker) {
  const stats = {};
  for (const [worker, values] of byWorker) {
    const sorted = [...values].sort((a, b) => a - b);
    stats[worker] = {
      received: sorted.length,
      p50_ms: round3(percentile(sorted, 0.5)),
      p99_ms: round3(percentile(sorted, 0.99)),
      max_ms: round3(sorted[sorted.length - 1]),
    };
  }
  return stats;
}

/** Every latency of one broadcast, overall and per server worker, for merging elsewhere. */
function rawLatencies(entry) {
  return {
    latencies: entry ? entry.latencies.map(round3) : [],
    worker_latencies: Object.fromEntries(
      [...(entry?.byWorker ?? [])].map(([worker, values]) => [worker, values.map(round3)]),
    ),
  };
}

function roundStats(receivers, seqs, expected, raw = false) {
  const perSeq = seqs.map((seq) => {
    const entry = receivers.arrivals.get(seq);
    const latencies = entry ? [...entry.latencies].sort((a, b) => a - b) : [];
    return {
      ...(raw ? rawLatencies(entry) : {}),
      seq,
      received: latencies.length,
      lost: Math.max(expected - latencies.length, 0),
      frame_bytes: entry?.bytes ?? null,
      p50_ms: round3(percentile(latencies, 0.5)),
      p99_ms: round3(percentile(latencies, 0.99)),
      max_ms: round3(latencies.length ? latencies[latencies.length - 1] : null),
      sent: entry?.sent ?? null,
      last: entry?.last ?? null,
      per_worker: entry ? workerStats(entry.byWorker) : {},
    };
  });
  const received = perSeq.reduce((sum, row) => sum + row.received, 0);
  const firstSent = Math.min(...perSeq.filter((r) => r.sent).map((r) => r.sent));
  const lastArrival = Math.max(...perSeq.filter((r) => r.last).map((r) => r.last));
  const span = lastArrival - firstSent;
  return {
    event: 'round',
    seqs,
    expected,
    received,
    lost: perSeq.reduce((sum, row) => sum + row.lost, 0),
    duplicates: receivers.duplicates,
    span_ms: Number.isFinite(span) ? round3(span) : null,
    deliveries_per_second: Number.isFinite(span) && span > 0 ? round3((received / span) * 1000) : null,
    per_seq: raw ? perSeq : perSeq.map(({ sent, last, ...row }) => row),
  };
}

async function fanout() {
  const urls = args.url.split(',');
  const count = Number(args.sockets);
  const concurrency = Number(args.concurrency ?? 100);
  const receivers = new Receivers();
  const started = now();
  const { failed, firstError } = await openMany(urls, count, concurrency, receivers);
  const seconds = (now() - started) / 1000;
  emit({
    event: 'opened',
    opened: receivers.open,
    failed,
    first_error: firstError,
    seconds: round3(seconds),
    per_second: round3(receivers.open / seconds),
    deflate_offered: args.deflate,
    deflate_negotiated: receivers.deflated,
    deflate_params: Object.fromEntries(receivers.deflateParams),
  });
  let mark = { cpu: process.cpuUsage(), at: now() };
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    if (command.cmd === 'mark') {
      mark = { cpu: process.cpuUsage(), at: now() };
      emit({ event: 'marked', open: receivers.open });
    } else if (command.cmd === 'expect') {
      const expected = receivers.open;
      await receivers.wait(command.seqs, expected, (command.timeout ?? 20) * 1000);
      // This process's CPU from the mark until the last arrival: near 100% of a core, the
      // client may be what limits the figures.
      const clientCpu = cpuPercent(mark.cpu, (now() - mark.at) / 1000);
      await sleep(command.grace_ms ?? 100); // duplicates and stragglers still count
      const stats = roundStats(receivers, command.seqs, expected, command.raw ?? false);
      stats.closed_early = receivers.closedEarly;
      stats.client_cpu_percent = clientCpu;
      emit(stats);
    } else if (command.cmd === 'bytes') {
      emit({ event: 'bytes', open: receivers.open, ...receivers.bytesRead() });
    } else if (command.cmd === 'close') {
      receivers.closing = true;
      await Promise.all(receivers.sockets.map(closeSocket));
      emit({ event: 'closed', closed_early: receivers.closedEarly });
      break;
    }
  }
  process.exit(0);
}

// --- publish -----------------------------------------------------------------------------

const TEXT_LENGTH = 100; // characters of the published text, as bench/trigger.py's broadcasts

/** One socket publishing `count` messages at `rate` a second; with --ack, each one's
 * publish -> `published` latency. */
async function publish() {
  const count = Number(args.count);
  const interval = 1000 / Number(args.rate);
  const firstSeq = Number(args['first-seq']);
  const sentAt = new Map(); // client id -> send time
  const acks = [];
  let errors = 0;
  const refused = []; // seqs answered with an error: they reach no subscriber
  let firstError = null;
  let acked = 0;
  let waiter = null;
  let welcome = null;
  const onMessage = (data) => {
    const arrived = now();
    const text = data.toString();
    if (welcome === null && text.startsWith('{"type":"welcome"')) {
      const { user, protocol, worker } = JSON.parse(text); // the project's: who is publishing
      welcome = { user, protocol, worker };
    }
    if (!text.startsWith('{"type":"published"') && !text.startsWith('{"type":"error"')) return;
    const message = JSON.parse(text);
    if (!sentAt.has(message.id)) return;
    if (message.type === 'published') acks.push(arrived - sentAt.get(message.id));
    else {
      errors += 1;
      refused.push(Number(message.id.slice('bench-'.length)));
      firstError ??= text.slice(0, 300);
    }
    acked += 1;
    if (waiter && acked >= count) waiter();
  };
  const headers = args.cookie ? { Cookie: args.cookie } : undefined;
  const protocols = args.protocol ? [args.protocol] : undefined;
  const ws = await open(args.url, { onMessage, protocols, headers });
  let closedEarly = false;
  ws.on('close', () => (closedEarly = true));
  await sleep(300); // the welcome arrives before the first publish
  const cpuBefore = process.cpuUsage();
  const started = now();
  for (let index = 0; index < count; index += 1) {
    const delay = started + index * interval - now();
    if (delay > 0) await sleep(delay);
    const seq = firstSeq + index;
    const id = `bench-${seq}`;
    const sent = now();
    const data = `bench seq=${seq} sent=${sent.toFixed(3)} `.padEnd(TEXT_LENGTH, 'x');
    sentAt.set(id, sent);
    ws.send(JSON.stringify({ type: 'publish', topic: args.topic, data, id }));
  }
  const sendSeconds = (now() - started) / 1000;
  if (args.ack && acked < count) {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 20000);
      waiter = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
  const clientCpu = cpuPercent(cpuBefore, (now() - started) / 1000);
  const sorted = [...acks].sort((a, b) => a - b);
  const dropped = closedEarly; // before the server answered every publish (or the wait ended)
  await closeSocket(ws);
  emit({
    mode: 'publish',
    sent: count,
    first_seq: firstSeq,
    rate: Number(args.rate),
    send_seconds: round3(sendSeconds),
    acks: args.ack ? sorted.length : null,
    errors,
    refused_seqs: refused,
    first_error: firstError,
    unanswered: args.ack ? count - acked : null,
    ack_p50_ms: round3(percentile(sorted, 0.5)),
    ack_p99_ms: round3(percentile(sorted, 0.99)),
    ack_max_ms: round3(sorted.length ? sorted[sorted.length - 1] : null),
    closed_early: dropped,
    client_cpu_percent: clientCpu,
    welcome,
  });
}

const modes = { echo, fanout, publish };
const mode = modes[positionals[0]];
if (!mode) {
  console.error(`usage: node loadgen.mjs ${Object.keys(modes).join('|')} --url URL ...`);
  process.exit(2);
}
mode().catch((error) => {
  console.error(error);
  process.exit(1);
});
