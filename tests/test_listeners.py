"""Listening sockets that `serve`'s supervisor holds and its workers adopt
(realtime/server/listeners.py).

The supervisor tests run the real Supervisor in its own process (it handles signals) with a
small stand-in worker instead of daphne: a worker that never accepts is the only way to be sure
a connection is waiting in the kernel's queue when its process stops. The same scenarios run
with real daphne workers in tests/test_serve.py and tests/test_serve_reload.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from realtime.server.listeners import (
    LISTEN_FDS,
    READY,
    READY_FD,
    inherited_listener,
    notify_ready,
    open_listener,
    parse_listen_fds,
)
from tests.helpers import PYTHON, ROOT, free_port
from tests.test_serve import started

# --- Handing sockets down (in process) -------------------------------------------------------


def test_listen_fds_are_read_as_port_and_descriptor():
    assert parse_listen_fds("8443:5,8080:6") == {8443: 5, 8080: 6}
    assert parse_listen_fds("") == {}
    with pytest.raises(ValueError, match="expected PORT:FD entries, not '8443'"):
        parse_listen_fds("8443")


def test_an_inherited_listener_is_handed_out_once_for_its_port():
    with open_listener("127.0.0.1", 0) as listener:
        port = listener.getsockname()[1]
        environ = {LISTEN_FDS: f"{port}:{os.dup(listener.fileno())}"}
        assert inherited_listener(port + 1, environ) is None
        adopted = inherited_listener(port, environ)
        assert adopted is not None
        with adopted, socket.create_connection(("127.0.0.1", port), timeout=5):
            adopted.settimeout(5)
            connection, _ = adopted.accept()  # the very socket the "supervisor" opened
            connection.close()
        assert inherited_listener(port, environ) is None
        assert environ[LISTEN_FDS] == ""


def test_a_descriptor_that_is_not_a_listener_on_the_port_is_refused():
    with open_listener("127.0.0.1", 0) as listener, socket.socket() as idle:
        port = listener.getsockname()[1]
        with pytest.raises(ValueError, match=f"is not listening on TCP port {port + 1}"):
            inherited_listener(port + 1, {LISTEN_FDS: f"{port + 1}:{os.dup(listener.fileno())}"})
        with pytest.raises(ValueError, match=f"is not listening on TCP port {port}"):
            inherited_listener(port, {LISTEN_FDS: f"{port}:{os.dup(idle.fileno())}"})


def test_ready_is_written_once_to_the_supervisors_pipe():
    read_end, write_end = os.pipe()
    environ = {READY_FD: str(write_end)}
    try:
        assert notify_ready(environ) is True
        assert os.read(read_end, 64) == READY
        assert os.read(read_end, 64) == b""  # the worker's end is closed
        assert notify_ready(environ) is False  # no pipe left to write to
    finally:
        os.close(read_end)
    assert notify_ready({}) is False


def test_a_port_already_taken_without_reuseport_cannot_be_opened():
    with socket.create_server(("127.0.0.1", 0)) as taken, pytest.raises(OSError):
        open_listener("127.0.0.1", taken.getsockname()[1])


# --- The supervisor and its sockets (real processes, stand-in workers) -----------------------

WORKER = """
import os, signal, sys, time
from pathlib import Path
from realtime.server.listeners import inherited_listener, notify_ready

port, starts, mode = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
listener = inherited_listener(port)
listener.setblocking(True)
with starts.open("a") as log:
    print(os.getpid(), file=log)
generation = len(starts.read_text().split())
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
notify_ready()
if mode == "first-never-accepts" and generation == 1:
    while True:
        signal.pause()
while True:
    connection, _ = listener.accept()
    connection.sendall(f"{os.getpid()}\\n".encode())
    connection.close()
"""

SUPERVISOR = """
import sys
from pathlib import Path
import realtime.server.supervisor as supervisor

# Long enough that a test sees the slot of a dead worker before its restart, on a slow machine.
supervisor.FIRST_DELAY = 10.0
port, workers, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
listen_on = [("127.0.0.1", port)]
sys.exit(supervisor.Supervisor(command, workers, Path.cwd(), listen_on=listen_on, grace=5).run())
"""


class Supervised:
    """A Supervisor process running stand-in workers on a free port; its log is its stdout."""

    def __init__(
        self, tmp_path: Path, workers: int, mode: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.starts = tmp_path / "starts"
        (tmp_path / "worker.py").write_text(WORKER)
        self.log_path = tmp_path / "supervisor.log"
        worker = [PYTHON, str(tmp_path / "worker.py"), str(self.port), str(self.starts), mode]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-c", SUPERVISOR, str(self.port), str(workers), *worker],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, f"no {count} x {text!r} in:\n{self.log()}"
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """The workers' pids, in the order they started."""
        return [pid for _, pid in started(self.log())]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator:
    running: list[Supervised] = []

    def run(workers: int, mode: str = "accept", env: dict[str, str] | None = None) -> Supervised:
        running.append(Supervised(tmp_path, workers, mode, env))
        return running[-1]

    yield run
    for each in running:
        each.stop()


def answer(port: int, timeout: float = 5) -> int:
    """The pid of the worker that accepted a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        return int(client.makefile().readline())


def test_a_connection_queued_when_a_reload_stops_its_worker_is_answered_by_the_successor(
    supervised,
):
    server = supervised(1, mode="first-never-accepts")
    server.wait_for(" is ready")
    [first] = server.pids()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as waiting:
        # Accepted by the kernel, queued on w1's socket: its process never accepts it.
        server.process.send_signal(signal.SIGHUP)
        server.wait_for("reload done")
        assert f"worker w1 (pid {first}) stopped with code 0" in server.log()
        [_, successor] = server.pids()
        # Had the old process's close reset the queue, this would be ConnectionResetError.
        assert int(waiting.makefile().readline()) == successor


def test_a_dead_workers_socket_is_closed_so_the_others_take_every_connection(supervised):
    server = supervised(2)
    server.wait_for(" is ready", count=2)
    w1, w2 = (pid for name, pid in sorted(started(server.log())))
    assert {answer(server.port) for _ in range(40)} == {w1, w2}  # the kernel spreads them
    os.kill(w1, signal.SIGKILL)
    server.wait_for(f"worker w1 (pid {w1}) exited with code -9; restarting in 10.0 s")
    # Until w1 restarts, nothing waits in its queue: every connection reaches w2, at once.
    assert {answer(server.port, timeout=2) for _ in range(40)} == {w2}


def test_after_a_stop_nothing_listens_on_the_port(supervised):
    server = supervised(2)
    server.wait_for(" is ready", count=2)
    server.stop()
    assert server.process.returncode == 0
    assert "all workers stopped" in server.log()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()


def test_systemd_hears_ready_once_every_worker_serves_and_around_a_reload_and_the_stop(
    supervised, tmp_path
):
    """`Type=notify` (deploy/systemd/realtime.service): a datagram socket stands in for systemd."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify"))
        systemd.settimeout(30)
        server = supervised(2, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})

        def heard() -> list[str]:
            return systemd.recv(4096).decode().splitlines()

        assert heard()[0] == "READY=1"
        assert server.log().count(" is ready") == 2  # not before both workers serve
        for pid in server.pids():
            assert b"NOTIFY_SOCKET" not in Path(f"/proc/{pid}/environ").read_bytes()
        server.process.send_signal(signal.SIGHUP)
        assert heard()[0] == "RELOADING=1"
        assert heard() == ["READY=1"]
        assert "reload done" in server.log()
        server.stop()
        assert heard() == ["STOPPING=1"]


def test_without_systemd_nothing_is_sent(monkeypatch):
    from realtime.server import systemd

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
