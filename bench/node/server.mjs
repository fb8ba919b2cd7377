/**
 * The seed article's server, as a peer for bench/run.py: Node's `https` (or `http` for plain
 * WS) and the `ws` package in one process, the ws README's "simple server" and "broadcast to
 * all clients" patterns and nothing more.
 *
 *   node server.mjs --port P [--host 127.0.0.1] [--cert CERT.pem --key KEY.pem]
 *
 * Every text or binary message is echoed back as it came, except on a socket opened on the path
 * `/broadcast`: what a client sends there goes to every other open socket, the ws README's
 * "client broadcast" pattern (a client publishing to everyone else). `POST /broadcast` (from
 * loopback only) sends the request body as one text message to every open socket, the way the
 * article broadcasts: a loop over `wss.clients` calling `send()`. Prints "listening PORT" once
 * it listens; SIGTERM or SIGINT closes everything and exits 0.
 */

import { readFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { parseArgs } from 'node:util';

import { WebSocket, WebSocketServer } from 'ws';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    cert: { type: 'string' },
    key: { type: 'string' },
  },
});

const LOOPBACK = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);

function broadcast(data, { binary = false, except = null } = {}) {
  let sent = 0;
  for (const client of wss.clients) {
    if (client !== except && client.readyState === WebSocket.OPEN) {
      client.send(data, { binary });
      sent += 1;
    }
  }
  return sent;
}

function handleRequest(request, response) {
  if (request.method !== 'POST' || request.url !== '/broadcast') {
    response.writeHead(404).end();
    return;
  }
  // A bench-only control endpoint: nothing but this machine may trigger it.
  if (!LOOPBACK.has(request.socket.remoteAddress)) {
    response.writeHead(403).end();
    return;
  }
  const chunks = [];
  request.on('data', (chunk) => chunks.push(chunk));
  request.on('end', () => {
    const sent = broadcast(Buffer.concat(chunks).toString('utf8'));
    response.writeHead(200, { 'content-type': 'text/plain' }).end(String(sent));
  });
}

const server = args.cert
  ? createHttpsServer({ cert: readFileSync(args.cert), key: readFileSync(args.key) }, handleRequest)
  : createHttpServer(handleRequest);
const wss = new WebSocketServer({ server });

wss.on('connection', (ws, request) => {
  ws.on('error', console.error);
  if (new URL(request.url, 'http://localhost').pathname === '/broadcast') {
    ws.on('message', (data, isBinary) => broadcast(data, { binary: isBinary, except: ws }));
  } else {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
});

function stop() {
  for (const client of wss.clients) client.terminate();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

server.listen(Number(args.port), args.host, () => {
  console.log(`listening ${server.address().port}`);
});
