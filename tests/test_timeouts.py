"""The timeout sweep that visits only the connections with a check due
(realtime/server/timeouts.py).

In process: daphne's own WebSocketProtocol.check_timeouts() runs on stand-in connections (no
transport: they record the ping or close daphne asks for) against a clock the test moves, as
the schedule and daphne would see it over minutes. End to end: a real daphne with the
project's server pings an idle WSS client, and closes it at websocket_timeout.
"""

from __future__ import annotations

import gc
import socket
import ssl
import time
import types

import pytest
from daphne.ws_protocol import WebSocketProtocol
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

from realtime.server.timeouts import SWEEP_INTERVAL, TimeoutSchedule
from tests.helpers import DAPHNE, free_port

PING_INTERVAL = 20.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """daphne's WebSocketProtocol reads this clock instead of the system's."""
    clock = Clock()
    monkeypatch.setattr("daphne.ws_protocol.time", types.SimpleNamespace(time=clock.time))
    return clock


class StandInWebSocket(WebSocketProtocol):
    """daphne's protocol with no transport: it records the pings and closes daphne sends."""

    def __init__(self, clock: Clock, websocket_timeout: float = -1) -> None:
        self.server = types.SimpleNamespace(
            websocket_timeout=websocket_timeout,
            websocket_connect_timeout=5,
            ping_interval=PING_INTERVAL,
        )
        self.state = self.STATE_OPEN
        self.socket_opened = self.last_ping = clock.now
        self.clock = clock
        self.pings: list[float] = []
        self.closes: list[float] = []
        self.looks = 0

    def check_timeouts(self) -> None:
        self.looks += 1
        super().check_timeouts()

    def _sendAutoPing(self) -> None:
        self.pings.append(self.clock.now - self.socket_opened)

    def serverClose(self, code: int | None = None) -> None:
        self.closes.append(self.clock.now - self.socket_opened)
        self.state = self.STATE_CLOSING

    def serverReject(self) -> None:
        self.closes.append(self.clock.now - self.socket_opened)


class StandInRequest:
    """An HTTP request: daphne checks its timeouts on every sweep."""

    def __init__(self) -> None:
        self.looks = 0

    def check_timeouts(self) -> None:
        self.looks += 1


def run_sweeps(schedule, connections, clock: Clock, seconds: float, timeout: float = -1) -> None:
    """Sweep every SWEEP_INTERVAL for `seconds`, as RealtimeServer.timeout_checker does."""
    for _ in range(round(seconds / SWEEP_INTERVAL)):
        clock.now += SWEEP_INTERVAL
        schedule.sweep(connections, clock.now, PING_INTERVAL, timeout)


def test_an_idle_websocket_is_looked_at_only_when_its_ping_is_due(clock):
    schedule, socket_ = TimeoutSchedule(), StandInWebSocket(clock)
    connections = {socket_}
    schedule.add(socket_, clock.now)
    run_sweeps(schedule, connections, clock, 61)
    # Pinged once past 20 s, at the first sweep after (as daphne's every-connection sweep does).
    assert socket_.pings == [22.0, 44.0]
    assert socket_.looks == 3  # the first sweep after it opened, then each ping (not 30 looks)


def test_a_message_postpones_the_ping_as_in_daphne(clock):
    schedule, socket_ = TimeoutSchedule(), StandInWebSocket(clock)
    connections = {socket_}
    schedule.add(socket_, clock.now)
    run_sweeps(schedule, connections, clock, 16)
    socket_.last_ping = clock.now  # daphne's onMessage does this
    run_sweeps(schedule, connections, clock, 24)
    assert socket_.pings == [38.0]


def test_websocket_timeout_closes_at_the_first_sweep_after_it(clock):
    schedule, socket_ = TimeoutSchedule(), StandInWebSocket(clock, websocket_timeout=5)
    schedule.add(socket_, clock.now)
    run_sweeps(schedule, {socket_}, clock, 8, timeout=5)
    assert socket_.closes[0] == 6.0
    assert socket_.pings == []


def test_requests_and_sockets_not_open_are_looked_at_on_every_sweep(clock):
    schedule = TimeoutSchedule()
    request, connecting = StandInRequest(), StandInWebSocket(clock)
    connecting.state = connecting.STATE_CONNECTING
    for protocol in (request, connecting):
        schedule.add(protocol, clock.now)
    run_sweeps(schedule, {request, connecting}, clock, 10)
    assert request.looks == connecting.looks == 5
    assert connecting.closes == [6.0, 8.0, 10.0]  # refused past websocket_connect_timeout (5 s)


def test_connections_daphne_dropped_or_that_are_gone_leave_the_schedule(clock):
    schedule = TimeoutSchedule()
    dropped, collected = StandInRequest(), StandInRequest()
    schedule.add(dropped, clock.now)
    schedule.add(collected, clock.now)
    del collected
    gc.collect()  # the schedule's weak reference did not keep it
    run_sweeps(schedule, set(), clock, 2)
    assert dropped.looks == 0
    assert len(schedule) == 0


def test_a_failing_check_does_not_stop_the_others(clock, caplog):
    class Broken(StandInRequest):
        def check_timeouts(self) -> None:
            raise RuntimeError("broken")

    schedule, broken, fine = TimeoutSchedule(), Broken(), StandInRequest()
    for protocol in (broken, fine):
        schedule.add(protocol, clock.now)
    run_sweeps(schedule, {broken, fine}, clock, 4)
    assert fine.looks == 2
    assert "Timeout check failed" in caplog.text


def test_five_thousand_idle_sockets_cost_a_tenth_of_the_looks(clock):
    schedule = TimeoutSchedule()
    sockets = [StandInWebSocket(clock) for _ in range(5000)]
    for socket_ in sockets:
        schedule.add(socket_, clock.now)
    run_sweeps(schedule, set(sockets), clock, 60)
    looks = sum(socket_.looks for socket_ in sockets)
    assert all(socket_.pings == [22.0, 44.0] for socket_ in sockets)
    assert looks == 3 * 5000  # daphne's sweep: 30 looks each in 60 s


# --- End to end: a real daphne pings, through the schedule -----------------------------------


def frames_until(connection: ssl.SSLSocket, client: ClientProtocol, deadline: float) -> list:
    """Every frame received until `deadline` (pongs are answered by the client protocol)."""
    frames = []
    while time.monotonic() < deadline:
        connection.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = connection.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        client.receive_data(data)
        for outgoing in client.data_to_send():
            connection.sendall(outgoing)
        frames += client.events_received()
    return frames


def idle_frames(port: int, client_tls, seconds: float) -> list:
    """Every frame an idle WSS client of the server on `port` receives in `seconds`."""
    client = ClientProtocol(parse_uri(f"wss://localhost:{port}/ws/"))
    request = client.connect()
    request.headers["Origin"] = f"https://localhost:{port}"
    client.send_request(request)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client_tls.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        for outgoing in client.data_to_send():
            connection.sendall(outgoing)
        return frames_until(connection, client, time.monotonic() + seconds)


def test_a_real_daphne_pings_an_idle_client_and_closes_it_at_websocket_timeout(
    start, dev_certs, client_tls
):
    port = free_port()
    endpoint = f"realtime:{port}:privateKey={dev_certs.key}:certKey={dev_certs.cert}"
    args = [DAPHNE, "--ping-interval", "1", "--websocket_timeout", "9", "-e", endpoint]
    start([*args, "project.asgi:application"], port)
    frames = idle_frames(port, client_tls, 15)
    pings = [frame for frame in frames if getattr(frame, "opcode", None) == Opcode.PING]
    closes = [frame for frame in frames if getattr(frame, "opcode", None) == Opcode.CLOSE]
    # A ping each sweep (interval 1 s, sweeps every 2 s) for the 9 s the socket lives.
    assert 3 <= len(pings) <= 5, frames
    assert len(closes) == 1
