"""Handshake load: new TCP connection, TLS handshake, WebSocket upgrade and close, in a loop.

    python -m bench.handshakes --url wss://127.0.0.1:P/ws/ --origin https://localhost:P \
        [--ca CA.pem] [--resume] [--processes 8] [--duration 3] [--warmup 0.5]

Prints one JSON line, like the Node load generator's modes. Why Python and not Node here:
Node's TLS client spends about 1.1 ms of CPU on each new connection, so on the one core the
load generator gets it tops out near 850 handshakes/s, below what daphne and Node serve. A
blocking OpenSSL client (Python's ssl module) costs about half that, and P processes give P
handshakes in flight.

Each cycle: connect, TLS (verified against --ca, server name "localhost"), send the upgrade
request with the Origin header, read the 101 response, send a close frame (1000), and read
until the server closes the connection, so that every counted cycle includes the server's
whole work. With --resume each process offers the newest TLS session it received (TLS 1.3
tickets), and `SSLSocket.session_reused` tells whether the server really resumed it.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

CLOSE_FRAME = bytes([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8])  # masked close, code 1000
TIMEOUT = 10.0


def upgrade_request(host: str, port: int, path: str, origin: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {origin}\r\n\r\n"
    ).encode()


def read_response_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the upgrade response")
        data += chunk
    return data


def drain_until_closed(sock: socket.socket) -> None:
    """Read (welcome messages, the close reply) until the server closes the connection."""
    try:
        while sock.recv(4096):
            pass
    except (ssl.SSLError, OSError):
        pass  # a TLS connection closed without close_notify ends here too


class Cycle:
    """One connection's settings, shared by every cycle of a process."""

    def __init__(self, url: str, origin: str, ca: str | None) -> None:
        parts = urlsplit(url)
        self.secure = parts.scheme == "wss"
        self.address = (parts.hostname, parts.port)
        self.request = lambda: upgrade_request(parts.hostname, parts.port, parts.path, origin)
        self.context = ssl.create_default_context(cafile=ca) if self.secure else None
        self.session: ssl.SSLSession | None = None

    def run(self, resume: bool) -> dict[str, Any]:
        raw = socket.create_connection(self.address, timeout=TIMEOUT)
        # As browsers and Node do: without it Nagle holds the upgrade request back behind the
        # TLS Finished message until the server's delayed ACK, 40 ms later.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw
        try:
            if self.context is not None:
                sock = self.context.wrap_socket(
                    raw, server_hostname="localhost", session=self.session if resume else None
                )
            sock.sendall(self.request())
            head = read_response_head(sock)
            opened = time.perf_counter()
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            info = self.tls_info(sock, resume)
            sock.sendall(CLOSE_FRAME)
            drain_until_closed(sock)
            return {"opened": opened, **info}
        finally:
            sock.close()

    def tls_info(self, sock: socket.socket, resume: bool) -> dict[str, Any]:
        if not isinstance(sock, ssl.SSLSocket):
            return {"reused": False, "tls": None}
        if resume and sock.session is not None:
            self.session = sock.session  # the newest ticket, received with the response
        cipher = sock.cipher()
        return {
            "reused": sock.session_reused,
            "tls": {"protocol": sock.version(), "cipher": cipher[0] if cipher else None},
        }


def worker(args: argparse.Namespace, start: float, results: multiprocessing.Queue) -> None:
    cycle = Cycle(args.url, args.origin, args.ca)
    measure_from, end = start + args.warmup, start + args.warmup + args.duration
    counted = reused = errors = 0
    first_error, tls, open_ms = None, None, []
    while time.perf_counter() < end:
        began = time.perf_counter()
        try:
            outcome = cycle.run(args.resume)
        except (OSError, ConnectionError) as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            time.sleep(0.02)
            continue
        tls = tls or outcome["tls"]
        if began >= measure_from and time.perf_counter() <= end:
            counted += 1
            reused += outcome["reused"]
            open_ms.append((outcome["opened"] - began) * 1000)
    results.put(
        {
            "counted": counted,
            "reused": reused,
            "errors": errors,
            "first_error": first_error,
            "tls": tls,
            "open_ms": open_ms,
        }
    )


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--origin", required=True)
    parser.add_argument("--ca")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = context.Queue()
    start = time.perf_counter() + 0.2  # every process starts its clock together
    workers = [
        context.Process(target=worker, args=(args, start, results)) for _ in range(args.processes)
    ]
    before = os.times()
    for process in workers:
        process.start()
    outcomes = [results.get(timeout=args.warmup + args.duration + 60) for _ in workers]
    for process in workers:
        process.join()
    after = os.times()
    used = after.children_user + after.children_system
    used -= before.children_user + before.children_system
    counted = sum(o["counted"] for o in outcomes)
    open_ms = [ms for o in outcomes for ms in o["open_ms"]]
    print(
        json.dumps(
            {
                "mode": "handshakes",
                "resume": args.resume,
                "concurrency": args.processes,
                "seconds": args.duration,
                "cycles": counted,
                "per_second": round(counted / args.duration, 3),
                "reused": sum(o["reused"] for o in outcomes),
                "reused_fraction": round(sum(o["reused"] for o in outcomes) / counted, 3)
                if counted
                else None,
                "errors": sum(o["errors"] for o in outcomes),
                "first_error": next((o["first_error"] for o in outcomes if o["first_error"]), None),
                "open_ms_p50": percentile(open_ms, 0.5),
                "open_ms_p99": percentile(open_ms, 0.99),
                "tls": next((o["tls"] for o in outcomes if o["tls"]), None),
                # Over warm-up and measurement both: the processes' whole lives.
                "client_cpu_percent": round(100 * used / (args.warmup + args.duration + 0.2), 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
