"""Processes of a benchmark run: servers started (optionally pinned), measured, always stopped.

Every process started here is recorded in `STARTED` and stopped by `stop_all()`, which
bench/run.py calls in a `finally` (so also on Ctrl-C and on errors) and at exit. Servers run in
their own process group, so stopping one also stops whatever it started (serve's workers).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 20.0

STARTED: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit, for the processes it
    starts (they inherit it): a load generator or a server holds thousands of sockets.
    Answers the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def pinned(args: list[str], cpus: str | None) -> list[str]:
    """`args` under `taskset -c CPUS` (taskset execs, so the pid stays the program's own)."""
    return ["taskset", "-c", cpus, *args] if cpus else args


def spawn(
    args: list[str],
    *,
    env: dict[str, str],
    log_path: Path | None = None,
    cpus: str | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process in its own session and remember it for stop_all()."""
    log = log_path.open("ab") if log_path else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            pinned(args, cpus),
            cwd=ROOT,
            env=env,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            start_new_session=True,
        )
    finally:
        if log_path:
            log.close()
    STARTED.append(process)
    return process


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM to the process group, SIGKILL what is left after `timeout` seconds."""
    descendants = []
    if process.poll() is None:
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(process.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # A leader that exited may leave a worker behind. psutil.Process remembers each one's start
    # time, so a pid that was since reused by another program is never signalled.
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
    if process in STARTED:
        STARTED.remove(process)


def stop_all() -> None:
    for process in reversed(list(STARTED)):
        stop(process)


atexit.register(stop_all)


def handle_stop_signals() -> None:
    """SIGTERM becomes SystemExit and SIGINT KeyboardInterrupt (even when started with SIGINT
    ignored, as a background job is), so that `finally` blocks stop the servers."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class Server:
    """One server process (which may start workers of its own), its log and its ports."""

    name: str
    args: list[str]
    env: dict[str, str]
    ports: list[int]
    log_path: Path
    cpus: str | None = None
    # serve's supervisor listens before its workers run: it is ready once each worker logged
    # "is ready". Other servers are ready once they listen.
    ready_workers: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 90.0) -> Server:
        self.process = spawn(self.args, env=self.env, log_path=self.log_path, cpus=self.cpus)
        try:
            self._wait_listening(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def _wait_listening(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log()}"
                )
            if self.ready_workers:
                if self.log(tail=None).count(" is ready\n") >= self.ready_workers:
                    return
            elif self._listening() >= len(self.ports):
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.name} did not listen on {self.ports} in {timeout} s:\n{self.log()}"
        )

    def _listening(self) -> int:
        count = 0
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                for conn in process.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port in self.ports:
                        count += 1
        return count

    def processes(self) -> list[psutil.Process]:
        """The server and all its descendants (serve's workers)."""
        if self.process is None or self.process.poll() is not None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def log(self, tail: int | None = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if tail is None else text[-tail:]

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@dataclass
class Usage:
    """CPU seconds (user + system) and resident memory of a set of processes, at one moment."""

    cpu_seconds: float
    rss_bytes: int
    at: float
    pids: frozenset[int]


def usage(servers: Iterable[Server]) -> Usage:
    cpu, rss, pids = 0.0, 0, set()
    for server in servers:
        for process in server.processes():
            with contextlib.suppress(psutil.Error):
                with process.oneshot():
                    times = process.cpu_times()
                    cpu += times.user + times.system
                    rss += process.memory_info().rss
                pids.add(process.pid)
    return Usage(cpu, rss, time.monotonic(), frozenset(pids))


def cpu_percent_between(before: Usage, after: Usage) -> float | None:
    """CPU used between two readings, in % of one core; None if the processes changed."""
    if before.pids != after.pids:
        return None
    return 100.0 * (after.cpu_seconds - before.cpu_seconds) / (after.at - before.at)
