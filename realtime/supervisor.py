"""Keep N worker processes running; stop them all on SIGTERM or SIGINT. Standard library only.

`manage.py serve` uses it to run N daphne processes that share one TLS port (SO_REUSEPORT,
see realtime/endpoints.py). Each worker gets REALTIME_WORKER_ID=w1..wN. A worker that exits
is started again after a delay that doubles (1 s up to 30 s) while it keeps dying within
10 s of its start. SIGTERM or SIGINT forwards SIGTERM to every worker, waits up to a grace
period, SIGKILLs the rest, and returns 0.

Its output, one line per event (tests and operators parse the first two):

    worker w1 started (pid 1234)
    worker w1 (pid 1234) exited with code -9; restarting in 1.0 s
    worker w1 could not start: <error>; retrying in 2.0 s
    stopping 2 worker(s): SIGTERM, up to 10.0 s
    worker w1 (pid 1234) did not stop in time: SIGKILL
    worker w1 (pid 1234) stopped with code -9
    all workers stopped
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
QUICK_EXIT = 10.0  # a worker that dies sooner than this after its start backs off further
DEFAULT_GRACE = 10.0
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def restart_delay(previous: float | None, ran_for: float) -> float:
    """Seconds to wait before starting a worker again that ran `ran_for` seconds."""
    if previous is None or ran_for >= QUICK_EXIT:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn that has the kernel SIGKILL the worker when the supervisor dies.

    PR_SET_PDEATHSIG is the simplest robust way on Linux: it needs no cooperation from daphne
    (a pipe would need code in the worker watching it) and it also covers a SIGKILLed
    supervisor, which can run no clean-up. SIGKILL rather than SIGTERM: with no supervisor
    left, a worker that hung on to the shared port would take connections unsupervised.
    The setting survives exec; it fires when the forking thread ends, and the supervisor only
    forks from its main thread. Elsewhere this is a no-op: stop the supervisor with SIGTERM.
    """
    if not sys.platform.startswith("linux"):
        return lambda: None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not after

    def preexec() -> None:
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


class Supervisor:
    """Runs `command` N times, restarting exits, until SIGTERM or SIGINT."""

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        cwd: Path,
        env: dict[str, str] | None = None,
        grace: float = DEFAULT_GRACE,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.command = list(command)
        self.workers = [Worker(f"w{n}") for n in range(1, workers + 1)]
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.grace = grace
        self.log = log or (lambda line: print(line, flush=True))
        self.stop_requests = 0
        self.selector: selectors.BaseSelector | None = None

    # --- Running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until asked to stop; then stop them. Returns 0."""
        with self._signals():
            try:
                for worker in self.workers:
                    self._start(worker)
                while not self.stop_requests:
                    self._reap_and_restart()
                    self._wait(self._next_timeout())
            finally:
                self._stop_all()
        return 0

    def _start(self, worker: Worker) -> None:
        worker.restart_at = None
        worker.started_at = time.monotonic()
        try:
            worker.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env={**self.env, "REALTIME_WORKER_ID": worker.name},
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as exc:
            worker.process = None
            message = f"worker {worker.name} could not start: {exc}"
            self._schedule_restart(worker, 0.0, message, "retrying")
            return
        self.log(f"worker {worker.name} started (pid {worker.process.pid})")

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is not None:
                process, worker.process = worker.process, None
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

    # --- Stopping ----------------------------------------------------------------------------

    def _running(self) -> list[Worker]:
        return [w for w in self.workers if w.process is not None and w.process.poll() is None]

    def _stop_all(self) -> None:
        running = self._running()
        self.log(f"stopping {len(running)} worker(s): SIGTERM, up to {self.grace:.1f} s")
        for worker in running:
            self._signal(worker, signal.SIGTERM)
        self._wait_for_exits(time.monotonic() + self.grace)
        for worker in self._running():
            pid = worker.process.pid
            self.log(f"worker {worker.name} (pid {pid}) did not stop in time: SIGKILL")
            self._signal(worker, signal.SIGKILL)
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
    def _signal(worker: Worker, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signum)

    # --- Signals -----------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self.stop_requests += 1

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Handle SIGTERM/SIGINT/SIGCHLD; each one also wakes `_wait` through a pipe."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(read_fd, selectors.EVENT_READ)
        previous_fd = signal.set_wakeup_fd(write_fd)
        handlers = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGCHLD)}
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        # A Python handler, even one that does nothing, is what makes SIGCHLD reach the pipe.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            self.selector.close()
            os.close(read_fd)
            os.close(write_fd)

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal arrives or `timeout` passes."""
        assert self.selector is not None
        for key, _ in self.selector.select(timeout):
            with contextlib.suppress(BlockingIOError):
                while os.read(key.fd, 512):
                    pass
