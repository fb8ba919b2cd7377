"""Clients that stop reading (realtime/server/unsent.py), against `serve` and a private Redis.

Twelve sockets open, get their 101, then never read again (their receive buffers kept small);
three others read everything. 3,000 broadcasts of 2,000 characters (6.3 MB per socket) follow:
the kernel's send buffer takes up to 4 MB of each, the rest would wait in the worker. With
REALTIME_WS_MAX_UNSENT_BYTES at 128 KiB the twelve are dropped before they get everything, the
three receive every broadcast, and the worker's memory grows by far less than what the twelve
would have held (about 2 MB each).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import subprocess
from pathlib import Path

from tests.helpers import PYTHON, ROOT, free_port, latest_id, receive_json, ws_connect

CAP = 128 * 1024
NON_READERS, READERS, BROADCASTS, LENGTH = 12, 3, 3000, 2000


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
        * 1024
    )


def worker_pid(server) -> int:
    """The one daphne worker under `serve --workers 1`."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text()
    [pid] = children.split()
    return int(pid)


def open_and_stop_reading(port: int, tls: ssl.SSLContext) -> ssl.SSLSocket:
    """A WebSocket whose client reads its 101 and nothing more, with a small receive buffer."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    conn = tls.wrap_socket(raw, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall(
        (
            f"GET /ws/ HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: https://localhost:{port}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return conn


def send_long_broadcasts(env: dict[str, str]) -> None:
    """BROADCASTS broadcasts of LENGTH characters, from another process (as `manage.py shell`)."""
    code = (
        "from realtime import broadcast\n"
        f"for n in range({BROADCASTS}):\n"
        f"    broadcast.send(f'{{n:04d}} ' + 'x' * {LENGTH - 5})\n"
    )
    done = subprocess.run(
        [PYTHON, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def drained(conn: ssl.SSLSocket) -> int:
    """Read what is left until the server's drop shows; returns the bytes read."""
    total = 0
    try:
        while chunk := conn.recv(65536):
            total += len(chunk)
    except (ConnectionResetError, ssl.SSLError, TimeoutError):
        pass
    return total


def test_sockets_that_stop_reading_are_dropped_and_the_others_get_everything(
    start, dev_certs, redis_server, client_tls, server_database
):
    port = free_port()
    tls_args = ["--cert", str(dev_certs.cert), "--key", str(dev_certs.key)]
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "1", "--port", str(port), *tls_args],
        port,
        REDIS_URL=redis_server.url,
        REALTIME_WS_MAX_UNSENT_BYTES=str(CAP),
    )
    env = {**server.env, "REDIS_URL": redis_server.url}
    before = latest_id(env)
    url = f"wss://localhost:{port}/ws/"

    async def reader(ready: asyncio.Event, counts: list[int]) -> set[int]:
        ids: set[int] = set()
        async with ws_connect(url, client_tls, max_size=2**20) as socket_:
            await receive_json(socket_)
            counts.append(1)
            if len(counts) == READERS:
                ready.set()
            while len(ids) < BROADCASTS:
                message = await receive_json(socket_, timeout=60)
                if message["type"] == "broadcast" and message["id"] > before:
                    ids.add(message["id"])
        return ids

    async def scenario() -> tuple[list[set[int]], list[int], int, int]:
        ready, counts = asyncio.Event(), []
        readers = [asyncio.create_task(reader(ready, counts)) for _ in range(READERS)]
        await asyncio.wait_for(ready.wait(), 30)
        stalled = [open_and_stop_reading(port, client_tls) for _ in range(NON_READERS)]
        worker = worker_pid(server)
        baseline = rss_bytes(worker)
        await asyncio.to_thread(send_long_broadcasts, env)
        received = await asyncio.wait_for(asyncio.gather(*readers), 120)
        peak = rss_bytes(worker)
        left = [drained(conn) for conn in stalled]
        for conn in stalled:
            conn.close()
        return received, left, baseline, peak

    received, left, baseline, peak = asyncio.run(scenario())
    expected = set(range(before + 1, before + BROADCASTS + 1))
    assert all(ids == expected for ids in received)  # the readers missed nothing
    assert server.log().count("more than 131072 bytes unsent (it stopped reading)") == NON_READERS
    per_socket = BROADCASTS * LENGTH
    assert all(count < 0.9 * per_socket for count in left), left  # cut off, not everything
    kernel = 4 * 1024 * 1024  # net.ipv4.tcp_wmem's maximum here
    held_without_cap = NON_READERS * (per_socket - kernel)
    assert peak - baseline < held_without_cap / 2, (baseline, peak, held_without_cap)
