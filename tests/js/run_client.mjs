// Run: node --experimental-websocket tests/js/run_client.mjs MODULE URL ORIGIN
// Drives a browser client module (realtime.mjs, or tests/js/realtime_v2.mjs: the previous
// version's) against a real server, for tests/test_versions_e2e.py: Node's WebSocket (undici)
// with the page's Origin, trusting NODE_EXTRA_CA_CERTS. Prints each event as a JSON line;
// reads commands from stdin: "drop" closes the socket and holds the reconnect, "release"
// lets it reconnect (so that what is sent in between is missed, then resumed).
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const [modulePath, url, origin] = process.argv.slice(2);
const { connect } = await import(pathToFileURL(modulePath).href);

const held = [];
let holding = false;
let current = null;

class PageSocket extends globalThis.WebSocket {
  constructor(socketUrl, protocols) {
    super(socketUrl, { protocols: protocols || [], headers: { Origin: origin } });
    current = this;
    this.addEventListener("open", () => print("socket", { url: socketUrl, protocol: this.protocol }));
  }
}

function print(event, value) {
  process.stdout.write(JSON.stringify({ event, value }) + "\n");
}

const rt = connect({
  url,
  WebSocket: PageSocket,
  onReload: (info) => print("onReload", info),
  setTimeout: (fn, ms) => (holding ? held.push(fn) : setTimeout(fn, ms)),
});
for (const name of ["state", "broadcast", "resume_failed", "error", "reload"]) {
  rt.on(name, (value) => print(name, name === "state" ? { state: value.state, code: value.code, welcome: value.welcome } : value));
}

createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "drop") {
    holding = true;
    current.close();
  } else if (line === "release") {
    holding = false;
    for (const fn of held.splice(0)) {
      fn();
    }
  } else if (line === "quit") {
    rt.close();
    process.exit(0);
  }
});
