"""Keep N worker processes running; stop them all on SIGTERM or SIGINT. Standard library only.

`manage.py serve` uses it to run N daphne processes on one TLS port (SO_REUSEPORT). It opens
each worker slot's listening sockets and keeps them across that slot's restarts
(realtime/server/listeners.py), restarts a worker that exits after a doubling delay, replaces
the workers one at a time on SIGHUP (a rolling restart, to load a renewed certificate), tells
systemd where it stands (realtime/server/systemd.py) and gives the workers one Prometheus
directory (realtime/server/prometheus.py). It writes one line per event, which tests and
operators parse: docs/deployment.md ("manage.py serve", "Certificate renewal") lists them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from realtime.server import prometheus, systemd
from realtime.server.listeners import (
    BACKLOG,
    LISTEN_FDS,
    READY,
    READY_FD,
    format_listen_fds,
    open_listener,
)

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
QUICK_EXIT = 10.0  # a worker that dies sooner than this after its start backs off further
DEFAULT_GRACE = 10.0
READY_TIMEOUT = 60.0  # how long a replacement worker may take to be ready during a reload
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def restart_delay(previous: float | None, ran_for: float) -> float:
    """Seconds to wait before starting a worker again that ran `ran_for` seconds."""
    if previous is None or ran_for >= QUICK_EXIT:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)


def _worker_preexec(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the worker ignores SIGHUP, and the kernel SIGKILLs it when the supervisor dies.

    SIGHUP is the supervisor's alone (a rolling restart); ignored, it stays ignored across exec,
    so a SIGHUP to the whole process group (a closed terminal, `kill -HUP -PGID`) does not kill
    every worker at once while the supervisor replaces them one by one.

    PR_SET_PDEATHSIG is the simplest robust way on Linux: it needs no cooperation from daphne
    (a pipe would need code in the worker watching it) and it also covers a SIGKILLed
    supervisor, which can run no clean-up. SIGKILL rather than SIGTERM: with no supervisor
    left, a worker that hung on to the shared port would take connections unsupervised.
    The setting survives exec; it fires when the forking thread ends, and the supervisor only
    forks from its main thread. Elsewhere only SIGHUP is ignored: stop the supervisor with
    SIGTERM.
    """

    def ignore_sighup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    if not sys.platform.startswith("linux"):
        return ignore_sighup
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not after

    def preexec() -> None:
        ignore_sighup()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class Worker:
    """One supervised process slot: w1, w2, ..."""

    name: str
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay: float | None = None  # the last restart delay, for the backoff
    restart_at: float | None = None
    listeners: dict[int, socket.socket] = field(default_factory=dict)  # by port

    def close_listeners(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()


class Supervisor:
    """Runs `command` N times, restarting exits, until SIGTERM or SIGINT.

    `listen_on` lists the (host, port) pairs each worker slot gets a listening socket for;
    the command's endpoints adopt them (realtime/server/listeners.py).
    """

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        cwd: Path,
        env: dict[str, str] | None = None,
        grace: float = DEFAULT_GRACE,
        log: Callable[[str], None] | None = None,
        listen_on: Sequence[tuple[str, int]] = (),
        backlog: int = BACKLOG,
    ) -> None:
        self.command = list(command)
        self.workers = [Worker(f"w{n}") for n in range(1, workers + 1)]
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.grace = grace
        self.log = log or (lambda line: print(line, flush=True))
        self.listen_on = list(listen_on)
        self.backlog = backlog
        self.ready_pids: set[int] = set()
        self.stop_requests = 0
        self.reload_requested = False
        self.selector: selectors.BaseSelector | None = None
        self.told_systemd_ready = False
        self.metrics_directory: str | None = None

    # --- Running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until asked to stop; then stop them. Returns 0."""
        self.metrics_directory = prometheus.make_directory()
        self.env[prometheus.DIRECTORY_ENV] = self.metrics_directory
        with self._signals():
            try:
                for worker in self.workers:
                    self._start(worker)
                while not self.stop_requests:
                    if self.reload_requested:
                        self._reload()
                    self._reap_and_restart()
                    self._wait(self._next_timeout())
            finally:
                self._stop_all()
                shutil.rmtree(self.metrics_directory, ignore_errors=True)
        return 0

    def _spawn(self, worker: Worker) -> subprocess.Popen[bytes]:
        """A new process for `worker`'s slot, on the slot's listening sockets (opened when the
        slot has none); raises OSError. Logs its "started" line; its "ready" one comes later."""
        if not worker.listeners:
            try:
                for host, port in self.listen_on:
                    worker.listeners[port] = open_listener(host, port, self.backlog)
            except OSError:
                worker.close_listeners()
                raise
        ready_read, ready_write = os.pipe()
        env = {
            **{k: v for k, v in self.env.items() if k != systemd.NOTIFY_SOCKET},
            "REALTIME_WORKER_ID": f"{socket.gethostname()}-{worker.name}",
            LISTEN_FDS: format_listen_fds({p: s.fileno() for p, s in worker.listeners.items()}),
            READY_FD: str(ready_write),
        }
        try:
            process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=env,
                pass_fds=[ready_write, *(s.fileno() for s in worker.listeners.values())],
                preexec_fn=_worker_preexec(os.getpid()),
            )
        except OSError:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        os.set_blocking(ready_read, False)
        assert self.selector is not None
        self.selector.register(ready_read, selectors.EVENT_READ, (worker.name, process.pid))
        self.log(f"worker {worker.name} started (pid {process.pid})")
        return process

    def _on_ready_pipe(self, fd: int, name: str, pid: int) -> None:
        """A worker wrote to its ready pipe, or closed it (by exiting, say)."""
        try:
            said = os.read(fd, len(READY))
        except BlockingIOError:
            return
        except OSError:
            said = b""
        assert self.selector is not None
        self.selector.unregister(fd)
        os.close(fd)
        if said == READY:
            self.ready_pids.add(pid)
            self.log(f"worker {name} (pid {pid}) is ready")
            self._tell_systemd_when_all_ready()

    def _tell_systemd_when_all_ready(self) -> None:
        """READY=1 once every worker's first process serves (`systemctl start` returns then)."""
        if self.told_systemd_ready:
            return
        if all(w.process is not None and w.process.pid in self.ready_pids for w in self.workers):
            self.told_systemd_ready = True
            systemd.notify("READY=1", f"STATUS={len(self.workers)} worker(s) ready")

    def _start(self, worker: Worker) -> None:
        worker.restart_at = None
        worker.started_at = time.monotonic()
        try:
            worker.process = self._spawn(worker)
        except OSError as exc:
            worker.process = None
            worker.close_listeners()
            message = f"worker {worker.name} could not start: {exc}"
            self._schedule_restart(worker, 0.0, message, "retrying")

    def _reap_and_restart(self, skip: Worker | None = None) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker is skip:
                continue
            if worker.process is not None and worker.process.poll() is not None:
                process, worker.process = worker.process, None
                self.ready_pids.discard(process.pid)
                self._forget(process.pid)
                # Closed, so that the kernel sends the slot's new connections to the others.
                worker.close_listeners()
                message = f"worker {worker.name} (pid {process.pid}) exited with code"
                self._schedule_restart(
                    worker, now - worker.started_at, f"{message} {process.returncode}"
                )
            elif worker.restart_at is not None and worker.restart_at <= now:
                self._start(worker)

    def _schedule_restart(
        self, worker: Worker, ran_for: float, message: str, verb: str = "restarting"
    ) -> None:
        worker.delay = restart_delay(worker.delay, ran_for)
        worker.restart_at = time.monotonic() + worker.delay
        self.log(f"{message}; {verb} in {worker.delay:.1f} s")

    def _next_timeout(self) -> float:
        now = time.monotonic()
        due = [w.restart_at - now for w in self.workers if w.restart_at is not None]
        # SIGCHLD wakes the loop at once; the 1 s cap is only a safety net.
        return max(0.0, min([1.0, *due]))

    # --- Reloading (SIGHUP) -------------------------------------------------------------------

    def _reload(self) -> None:
        """Replace every worker, one at a time, each new process ready before the old stops."""
        self.reload_requested = False  # a SIGHUP during the reload asks for another one
        self.log(f"reloading: replacing {len(self.workers)} worker(s) one at a time (SIGHUP)")
        systemd.reloading()
        try:
            for worker in self.workers:
                if self.stop_requests:
                    return
                self._reap_and_restart()  # a worker that died meanwhile is reported first
                if not self._replace(worker):
                    self.log("reload stopped: the workers not yet replaced keep running")
                    return
            self.log("reload done")
        finally:
            if not self.stop_requests:
                systemd.notify("READY=1")

    def _replace(self, worker: Worker) -> bool:
        """Start `worker`'s successor on the same sockets, wait until it is ready, then stop
        the old process."""
        old = worker.process
        try:
            new = self._spawn(worker)
        except OSError as exc:
            self.log(f"worker {worker.name} could not start: {exc}")
            if old is None:
                worker.close_listeners()
            return False
        started_at = time.monotonic()
        failure = self._wait_until_ready(worker, new)
        if failure:
            kept = f"pid {old.pid} keeps serving" if old is not None else "the slot stays empty"
            self.log(f"worker {worker.name} (pid {new.pid}) {failure}; {kept}")
            self._stop_process(worker.name, new)
            if old is None:
                worker.close_listeners()
            return False
        worker.process, worker.started_at = new, started_at
        worker.delay = worker.restart_at = None
        if old is None:
            return True
        self.log(f"worker {worker.name} (pid {old.pid}) replaced by pid {new.pid}: stopping it")
        self._stop_process(worker.name, old)
        return True

    def _wait_until_ready(self, worker: Worker, process: subprocess.Popen[bytes]) -> str:
        """Empty once `process` said it is ready; otherwise why it never will be."""
        started = time.monotonic()
        while not self.stop_requests:
            if process.pid in self.ready_pids:
                return ""
            if process.poll() is not None:
                return f"exited with code {process.returncode} before it was ready"
            if time.monotonic() - started > READY_TIMEOUT:
                return f"was not ready within {READY_TIMEOUT:.0f} s"
            self._reap_and_restart(skip=worker)
            self._wait(0.1)
        return "was stopped before it was ready"

    def _stop_process(self, name: str, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM one process, up to the grace period, then SIGKILL; logs how it ended."""
        self.ready_pids.discard(process.pid)
        self._signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while process.poll() is None and time.monotonic() < deadline and self.stop_requests < 2:
            self._reap_and_restart()
            self._wait(min(0.5, max(0.0, deadline - time.monotonic())))
        if process.poll() is None:
            self.log(f"worker {name} (pid {process.pid}) did not stop in time: SIGKILL")
            self._signal(process, signal.SIGKILL)
        self.log(f"worker {name} (pid {process.pid}) stopped with code {process.wait()}")
        self._forget(process.pid)

    def _forget(self, pid: int) -> None:
        """A worker exited: its open sockets no longer count in the host's metrics."""
        if self.metrics_directory is not None:
            prometheus.forget_worker(self.metrics_directory, pid)

    # --- Stopping ----------------------------------------------------------------------------

    def _running(self) -> list[Worker]:
        return [w for w in self.workers if w.process is not None and w.process.poll() is None]

    def _stop_all(self) -> None:
        for worker in self.workers:
            worker.close_listeners()  # the workers hold the last references: they close them
        running = self._running()
        systemd.notify("STOPPING=1")
        self.log(f"stopping {len(running)} worker(s): SIGTERM, up to {self.grace:.1f} s")
        for worker in running:
            self._signal(worker.process, signal.SIGTERM)
        self._wait_for_exits(time.monotonic() + self.grace)
        for worker in self._running():
            pid = worker.process.pid
            self.log(f"worker {worker.name} (pid {pid}) did not stop in time: SIGKILL")
            self._signal(worker.process, signal.SIGKILL)
        for worker in self.workers:
            if worker.process is not None:
                code, pid = worker.process.wait(), worker.process.pid
                self.log(f"worker {worker.name} (pid {pid}) stopped with code {code}")
        self.log("all workers stopped")

    def _wait_for_exits(self, deadline: float) -> None:
        # A second SIGTERM/SIGINT (Ctrl-C twice) cuts the grace period short.
        while self._running() and time.monotonic() < deadline and self.stop_requests < 2:
            self._wait(min(0.5, deadline - time.monotonic()))

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    # --- Signals -----------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self.stop_requests += 1

    def _on_reload_signal(self, signum: int, frame: object) -> None:
        self.reload_requested = True

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Handle SIGTERM/SIGINT/SIGHUP/SIGCHLD; each one also wakes `_wait` through a pipe."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(read_fd, selectors.EVENT_READ)
        previous_fd = signal.set_wakeup_fd(write_fd)
        watched = (*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD)
        handlers = {sig: signal.getsignal(sig) for sig in watched}
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        # A Python handler, even one that does nothing, is what makes SIGCHLD reach the pipe.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            for key in list(self.selector.get_map().values()):
                if key.data is not None:  # the ready pipes of workers that never wrote
                    os.close(key.fd)
            self.selector.close()
            os.close(read_fd)
            os.close(write_fd)

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal arrives or `timeout` passes."""
        assert self.selector is not None
        for key, _ in self.selector.select(timeout):
            if key.data is not None:
                self._on_ready_pipe(key.fd, *key.data)
                continue
            with contextlib.suppress(BlockingIOError):
                while os.read(key.fd, 512):
                    pass
