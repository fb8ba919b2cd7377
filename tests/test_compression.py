"""permessage-deflate on `serve --workers 2` (realtime/server/compression.py), read on the wire.

Raw TLS sockets do the WebSocket handshake by hand and read frames as bytes, so the tests see
what a client really receives: a broadcast's frame deflated (RSV1 set), the very same bytes on
every socket of both workers that negotiated compression, and the plain frame, as before, on a
socket that did not offer it. The `websockets` client (which offers it by default, as browsers
do) shows that messages both ways work, and that a compression bomb is closed with 1009 having
cost the server no more than the message size limit. Chromium: tests/test_browser.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import ssl
import struct
import zlib
from pathlib import Path

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport
from websockets.exceptions import ConnectionClosed

from realtime.server import compression
from realtime.server.compression import CompressionWebSocketProtocol, SharedFrame
from tests.helpers import (
    PYTHON,
    free_port,
    origin_for,
    receive_json,
    send_broadcasts,
    wait_until,
    ws_connect,
)
from tests.test_upstream import negotiated_deflate, open_protocol

STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")
OFFER = "permessage-deflate; client_max_window_bits"  # what Chromium and `websockets` offer
RSV1 = 0x40


@pytest.fixture(scope="module")
def served(start, redis_server):
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(serve, port, REDIS_URL=redis_server.url)
    wait_until(lambda: len(STARTED.findall(server.log())) >= 2, "both workers started")
    return server


def an_order_list(rows: int = 12) -> str:
    """About 1 KiB of JSON as an app would send it: repeated keys, varied values."""
    orders = [
        {
            "id": 48_210 + n * 7,
            "status": ["paid", "shipped", "packed"][n % 3],
            "customer": f"customer-{(n * 7919) % 1000:03d}",
            "total": f"{(n * 3.7 + 12) % 250:.2f}",
        }
        for n in range(rows)
    ]
    return json.dumps({"orders": orders})


class RawSocket:
    """A WebSocket client over TLS written by hand: the handshake's headers and each frame's
    bytes as they arrive."""

    def __init__(self, port: int, tls: ssl.SSLContext, offer: str | None) -> None:
        raw = socket.create_connection(("localhost", port), timeout=10)
        self.sock = tls.wrap_socket(raw, server_hostname="localhost")
        self.buffer = b""
        self.headers = self.handshake(port, offer)

    def handshake(self, port: int, offer: str | None) -> dict[str, str]:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET /ws/ HTTP/1.1",
            f"Host: localhost:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Origin: {origin_for(f'wss://localhost:{port}/ws/')}",
        ]
        if offer:
            lines.append(f"Sec-WebSocket-Extensions: {offer}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before the handshake's answer: {self.buffer!r}"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status, *fields = head.decode().split("\r\n")
        assert status.startswith("HTTP/1.1 101"), status
        return {name.lower(): value.strip() for name, value in (f.split(":", 1) for f in fields)}

    def take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def frame(self) -> bytes:
        """The next whole frame's bytes (server frames are unmasked)."""
        head = self.take(2)
        length = head[1] & 0x7F
        extended = b""
        if length == 126:
            extended = self.take(2)
            length = struct.unpack("!H", extended)[0]
        elif length == 127:
            extended = self.take(8)
            length = struct.unpack("!Q", extended)[0]
        return head + extended + self.take(length)

    def frame_with(self, marker: str) -> bytes:
        """The next frame whose text holds `marker` (skipping the welcome and others)."""
        for _ in range(20):
            frame = self.frame()
            if marker in text_of(frame):
                return frame
        raise AssertionError(f"no frame with {marker!r}")

    def close(self) -> None:
        self.sock.close()


def payload_of(frame: bytes) -> bytes:
    length = frame[1] & 0x7F
    return frame[2 + {126: 2, 127: 8}.get(length, 0) :]


def text_of(frame: bytes) -> str:
    payload = payload_of(frame)
    if frame[0] & RSV1:
        payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    return payload.decode()


def open_raw_on_both_workers(port: int, tls, offer: str | None) -> list[RawSocket]:
    """Raw sockets until both workers hold at least one (the kernel picks the worker)."""
    sockets, workers = [], set()
    for _ in range(30):
        raw = RawSocket(port, tls, offer)
        welcome = json.loads(text_of(raw.frame()))
        assert welcome["type"] == "welcome"
        sockets.append(raw)
        workers.add(welcome["worker"])
        if len(workers) == 2 and len(sockets) >= 4:
            return sockets
    raise AssertionError(f"30 sockets all on {workers}")


def test_a_broadcast_is_deflated_once_the_same_bytes_reach_every_socket_of_both_workers(
    served, client_tls, server_env, redis_server
):
    compressing = open_raw_on_both_workers(served.port, client_tls, OFFER)
    plain = RawSocket(served.port, client_tls, None)
    try:
        text = an_order_list()
        [broadcast_id] = send_broadcasts(server_env, redis_server.url, [text])
        marker = '"customer-000'
        frames = {raw.frame_with(marker) for raw in compressing}
        plain_frame = plain.frame_with(marker)
    finally:
        for raw in [*compressing, plain]:
            raw.close()
    extension = compressing[0].headers["sec-websocket-extensions"]
    assert extension.startswith("permessage-deflate") and "client_no_context_takeover" in extension
    assert "sec-websocket-extensions" not in plain.headers
    assert len(frames) == 1, "every socket got the same bytes"
    [frame] = frames
    assert frame[0] == 0x80 | RSV1 | 0x1  # FIN, compressed, text
    assert plain_frame[0] == 0x80 | 0x1  # FIN, text: as without compression
    assert text_of(frame) == text_of(plain_frame)
    message = json.loads(text_of(frame))
    assert (message["id"], message["message"]) == (broadcast_id, text)
    assert len(frame) <= 0.5 * len(plain_frame), (len(frame), len(plain_frame))


def test_small_messages_go_out_uncompressed_on_a_compressing_socket(served, client_tls):
    raw = RawSocket(served.port, client_tls, OFFER)
    try:
        assert raw.frame()[0] & RSV1  # the welcome: over 128 bytes
        raw.sock.sendall(masked_text(b'{"type":"ping"}'))
        pong = raw.frame()
    finally:
        raw.close()
    assert pong[0] == 0x81 and json.loads(payload_of(pong)) == {"type": "pong"}


def masked_text(payload: bytes, *, compressed: bool = False, opcode: int = 0x1) -> bytes:
    """A client's frame (masked, under 126 bytes), with RSV1 when `compressed`."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[n % 4] for n, byte in enumerate(payload))
    first = 0x80 | opcode | (RSV1 if compressed else 0)
    return struct.pack("!BB", first, 0x80 | len(payload)) + mask + masked


def close_code_of(frame: bytes) -> int:
    assert frame[0] & 0x0F == 0x8, frame
    return struct.unpack("!H", payload_of(frame)[:2])[0]


def deflated_in_one_context(*messages: bytes) -> list[bytes]:
    """Messages compressed as a client keeping its context would: each may refer back to the
    ones before it."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    return [
        (compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
        for message in messages
    ]


@pytest.mark.parametrize("case", ["corrupt", "context_takeover"])
def test_bad_compressed_data_is_closed_with_1007_and_nothing_else(served, client_tls, case):
    """Data that does not inflate, or a client that keeps its context although asked not to:
    the socket is closed with 1007, the close handshake completes, the worker logs no error."""
    ping = b'{"type":"ping","note":"' + b"context " * 8 + b'"}'
    raw = RawSocket(served.port, client_tls, OFFER)
    try:
        raw.frame()  # the welcome
        if case == "corrupt":
            raw.sock.sendall(masked_text(b"\x04", compressed=True))
        else:
            first, second = deflated_in_one_context(ping, ping)
            raw.sock.sendall(masked_text(first, compressed=True))
            assert json.loads(payload_of(raw.frame())) == {"type": "pong"}
            assert len(second) < len(first)  # it refers back to the first message
            raw.sock.sendall(masked_text(second, compressed=True))
        code = close_code_of(raw.frame())
        raw.sock.sendall(masked_text(struct.pack("!H", 1000), opcode=0x8))
        with contextlib.suppress(OSError):
            assert raw.sock.recv(100) == b""  # the server closes TCP
    finally:
        raw.close()
    assert code == 1007
    log = served.log()
    assert "Unhandled Error" not in log and "AttributeError" not in log


def test_websockets_sends_and_receives_compressed_messages_in_a_row(served, client_tls):
    url = f"wss://localhost:{served.port}/ws/"

    async def scenario():
        async with ws_connect(url, client_tls) as socket_:
            [extension] = socket_.protocol.extensions
            await receive_json(socket_)
            answers = []
            for n in range(5):  # each inflated on its own: no context carried over
                padded = {"type": "ping", "padding": "order-" * (40 + n)}
                await socket_.send(json.dumps(padded))
                answers.append(await receive_json(socket_))
            return extension, answers

    extension, answers = asyncio.run(scenario())
    assert extension.name == "permessage-deflate"
    assert extension.local_no_context_takeover  # the server asked for it
    assert answers == [{"type": "pong"}] * 5


def peak_memory_kib(pids: list[str]) -> list[int]:
    """Each process's peak resident memory so far (VmHWM)."""
    peaks = []
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        peaks.append(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)))
    return peaks


def test_a_compression_bomb_is_closed_with_1009_and_costs_the_limit_at_most(served, client_tls):
    """32 MiB of spaces deflate to about 32 KiB, one frame under the 64 KiB frame limit; the
    server inflates no more than the 64 KiB message limit (REALTIME_WS_MAX_MESSAGE_SIZE) and
    closes: no worker's peak memory grows by anything near the bomb's size."""
    url = f"wss://localhost:{served.port}/ws/"
    bomb = "{" + " " * (32 * 1024 * 1024) + "}"
    workers = [pid for _, pid in STARTED.findall(served.log())]

    async def scenario():
        async with ws_connect(url, client_tls) as socket_:
            await receive_json(socket_)
            try:
                await socket_.send(bomb)
                await asyncio.wait_for(socket_.wait_closed(), 10)
            except ConnectionClosed:
                pass
            return socket_.close_code

    async def fresh():
        async with ws_connect(url, client_tls) as socket_:
            return (await receive_json(socket_))["type"]

    before = peak_memory_kib(workers)
    assert asyncio.run(scenario()) == 1009
    grown = [after - was for after, was in zip(peak_memory_kib(workers), before, strict=True)]
    assert asyncio.run(fresh()) == "welcome"
    assert len(zlib.compress(bomb.encode())) < 64 * 1024  # small on the wire: a real bomb
    assert max(grown) < 4 * 1024, f"peak memory grew by {grown} KiB"


def test_with_compression_off_nothing_is_negotiated(start, client_tls, redis_server):
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "1", "--port", str(port)]
    server = start(serve, port, REDIS_URL=redis_server.url, REALTIME_WS_COMPRESSION="0")
    wait_until(lambda: STARTED.search(server.log()), "the worker started")
    raw = RawSocket(port, client_tls, OFFER)
    try:
        welcome = raw.frame()
    finally:
        raw.close()
    assert "sec-websocket-extensions" not in raw.headers
    assert welcome[0] == 0x81


def test_a_shared_frame_is_deflated_once_for_all_the_sockets_of_a_worker(monkeypatch):
    deflated = []
    real_deflate = compression.deflate
    monkeypatch.setattr(
        compression, "deflate", lambda data: deflated.append(data) or real_deflate(data)
    )
    frame = SharedFrame(an_order_list().encode())
    compressing = [open_protocol(negotiated_deflate())[1] for _ in range(3)]
    plain = open_protocol()[1]
    for protocol in [*compressing, plain]:
        frame.send_to(protocol)
    assert len(deflated) == 1
    assert {protocol.transport.value() for protocol in compressing} == {frame.deflated()}
    assert plain.transport.value() == frame.plain
    assert text_of(frame.deflated()) == text_of(frame.plain) == an_order_list()


class CompressingProtocol(CompressionWebSocketProtocol, WebSocketServerProtocol):
    """The mixin over autobahn's protocol, as RealtimeServer puts it over daphne's."""


def compressing_socket(compression) -> CompressingProtocol:
    factory = WebSocketServerFactory()
    factory.protocol = CompressingProtocol
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.state = protocol.STATE_OPEN
    protocol._perMessageCompress = compression
    protocol.onOpen()
    return protocol


def test_a_message_to_one_socket_is_deflated_as_a_broadcast_is_and_leaves_no_compressor():
    extension = negotiated_deflate()
    protocol = compressing_socket(extension)
    text = an_order_list().encode()
    protocol.sendMessage(text)
    protocol.sendMessage(b'{"type":"pong"}')
    sent = protocol.transport.value()
    assert sent == SharedFrame(text).deflated() + SharedFrame(b'{"type":"pong"}').plain


def test_without_compression_a_message_to_one_socket_goes_out_as_before():
    protocol = compressing_socket(None)
    text = an_order_list().encode()
    protocol.sendMessage(text)
    assert protocol.transport.value() == SharedFrame(text).plain
