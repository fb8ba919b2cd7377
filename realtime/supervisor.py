"""Keep N worker processes running; stop them all on SIGTERM or SIGINT. Standard library only.

`manage.py serve` uses it to run N daphne processes that share one TLS port (SO_REUSEPORT,
see realtime/endpoints.py). Each worker gets REALTIME_WORKER_ID=w1..wN. A worker that exits
is started again after a delay that doubles (1 s up to 30 s) while it keeps dying within
10 s of its start. SIGTERM or SIGINT forwards SIGTERM to every worker, waits up to a grace
period, SIGKILLs the rest, and returns 0.

SIGHUP replaces the workers one at a time (a rolling restart, to load a renewed certificate):
for each worker a new process starts first; once it listens on every one of `ready_ports`
(SO_REUSEPORT lets both processes listen on them), the old one gets SIGTERM and the grace
period, then the next worker follows. If a new process exits or does not listen within
READY_TIMEOUT, it is stopped, the old one keeps serving and the reload stops there.

Its output, one line per event (tests and operators parse the "started" and "exited" lines):

    worker w1 started (pid 1234)
    worker w1 (pid 1234) exited with code -9; restarting in 1.0 s
    worker w1 could not start: <error>; retrying in 2.0 s
    reloading: replacing 2 worker(s) one at a time (SIGHUP)
    worker w1 (pid 1240) is listening; stopping pid 1234
    worker w1 (pid 1234) stopped with code 0
    worker w1 (pid 1240) exited with code 1 before listening; pid 1234 keeps serving
    reload stopped: the workers not yet replaced keep running
    reload done
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
READY_TIMEOUT = 60.0  # how long a replacement worker may take to listen during a reload
READY_FALLBACK = 5.0  # without /proc, a replacement alive this long counts as listening
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
TCP_LISTEN = 0x0A  # the "st" column of /proc/net/tcp for a listening socket


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


def parse_proc_net_tcp(text: str) -> list[tuple[int, int, int]]:
    """(local port, state, socket inode) of each row of /proc/<pid>/net/tcp or tcp6."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 10:
            port = int(fields[1].rsplit(":", 1)[1], 16)
            rows.append((port, int(fields[3], 16), int(fields[9])))
    return rows


def listening_ports(pid: int) -> set[int] | None:
    """The TCP ports process `pid` itself listens on, or None where /proc cannot tell.

    A port counts only when one of the process's own file descriptors is the listening
    socket: another worker listening on the same port (SO_REUSEPORT) does not make this one
    ready. Linux only.
    """
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self/net/tcp").exists():
        return None
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in (proc / "fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            rows = parse_proc_net_tcp((proc / "net" / table).read_text())
            ports |= {port for port, st, inode in rows if st == TCP_LISTEN and inode in inodes}
    return ports


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
        ready_ports: Sequence[int] = (),
    ) -> None:
        self.command = list(command)
        self.workers = [Worker(f"w{n}") for n in range(1, workers + 1)]
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.grace = grace
        self.log = log or (lambda line: print(line, flush=True))
        self.ready_ports = set(ready_ports)
        self.stop_requests = 0
        self.reload_requested = False
        self.selector: selectors.BaseSelector | None = None

    # --- Running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until asked to stop; then stop them. Returns 0."""
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
        return 0

    def _spawn(self, worker: Worker) -> subprocess.Popen[bytes]:
        """A new process for `worker`'s slot (raises OSError); logs its "started" line."""
        process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env={**self.env, "REALTIME_WORKER_ID": worker.name},
            preexec_fn=_worker_preexec(os.getpid()),
        )
        self.log(f"worker {worker.name} started (pid {process.pid})")
        return process

    def _start(self, worker: Worker) -> None:
        worker.restart_at = None
        worker.started_at = time.monotonic()
        try:
            worker.process = self._spawn(worker)
        except OSError as exc:
            worker.process = None
            message = f"worker {worker.name} could not start: {exc}"
            self._schedule_restart(worker, 0.0, message, "retrying")

    def _reap_and_restart(self, skip: Worker | None = None) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker is skip:
                continue
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

    # --- Reloading (SIGHUP) -------------------------------------------------------------------

    def _reload(self) -> None:
        """Replace every worker, one at a time, each new process listening before the old stops."""
        self.reload_requested = False  # a SIGHUP during the reload asks for another one
        self.log(f"reloading: replacing {len(self.workers)} worker(s) one at a time (SIGHUP)")
        for worker in self.workers:
            if self.stop_requests:
                return
            self._reap_and_restart()  # a worker that died meanwhile is reported first
            if not self._replace(worker):
                self.log("reload stopped: the workers not yet replaced keep running")
                return
        self.log("reload done")

    def _replace(self, worker: Worker) -> bool:
        """Start `worker`'s successor, wait until it listens, then stop the old process."""
        old = worker.process
        try:
            new = self._spawn(worker)
        except OSError as exc:
            self.log(f"worker {worker.name} could not start: {exc}")
            return False
        started_at = time.monotonic()
        failure = self._wait_until_listening(worker, new)
        if failure:
            kept = f"pid {old.pid} keeps serving" if old is not None else "the slot stays empty"
            self.log(f"worker {worker.name} (pid {new.pid}) {failure}; {kept}")
            self._stop_process(worker.name, new)
            return False
        worker.process, worker.started_at = new, started_at
        worker.delay = worker.restart_at = None
        if old is None:
            return True
        self.log(f"worker {worker.name} (pid {new.pid}) is listening; stopping pid {old.pid}")
        self._stop_process(worker.name, old)
        return True

    def _wait_until_listening(self, worker: Worker, process: subprocess.Popen[bytes]) -> str:
        """Empty once `process` listens on every ready port; otherwise why it never will."""
        started = time.monotonic()
        while not self.stop_requests:
            if process.poll() is not None:
                return f"exited with code {process.returncode} before listening"
            ports = listening_ports(process.pid)
            if ports is None:
                if time.monotonic() - started >= READY_FALLBACK:
                    return ""
            elif self.ready_ports <= ports:
                return ""
            if time.monotonic() - started > READY_TIMEOUT:
                return f"did not listen within {READY_TIMEOUT:.0f} s"
            self._reap_and_restart(skip=worker)
            self._wait(0.1)
        return "was stopped before listening"

    def _stop_process(self, name: str, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM one process, up to the grace period, then SIGKILL; logs how it ended."""
        self._signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while process.poll() is None and time.monotonic() < deadline and self.stop_requests < 2:
            self._reap_and_restart()
            self._wait(min(0.5, max(0.0, deadline - time.monotonic())))
        if process.poll() is None:
            self.log(f"worker {name} (pid {process.pid}) did not stop in time: SIGKILL")
            self._signal(process, signal.SIGKILL)
        self.log(f"worker {name} (pid {process.pid}) stopped with code {process.wait()}")

    # --- Stopping ----------------------------------------------------------------------------

    def _running(self) -> list[Worker]:
        return [w for w in self.workers if w.process is not None and w.process.poll() is None]

    def _stop_all(self) -> None:
        running = self._running()
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
