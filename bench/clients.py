"""Python ends of the Node load generator (bench/node/loadgen.mjs) and of bench/trigger.py.

Both are subprocesses that speak JSON lines; a reader thread per process queues their lines so
that every wait here has a timeout, and a process that dies is an error with its log attached.
A set of fan-out sockets too large for one process is held by a FanoutGroup of several.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench import merge
from bench.procs import ROOT, spawn, stop

NODE_DIR = ROOT / "bench" / "node"
LOADGEN = NODE_DIR / "loadgen.mjs"


class LineProcess:
    """A subprocess that answers commands on stdin with JSON lines on stdout."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cpus: str | None):
        self.log_path = log_path
        self.process = spawn(
            args,
            env=env,
            log_path=log_path,
            cpus=cpus,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put(None)

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line, skipping anything else the process prints."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no answer in {timeout} s:\n{self.log()}") from None
            if line is None:
                raise RuntimeError(f"exited with {self.process.wait()}:\n{self.log()}")
            if line.startswith("{"):
                return json.loads(line)

    def write(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop(self.process, timeout=10)


def loadgen_args(mode: str, url: str, origin: str, ca: Path | None, **options: Any) -> list[str]:
    args = ["node", str(LOADGEN), mode, "--url", url, "--origin", origin]
    if ca is not None:
        args += ["--ca", str(ca)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (None, False):
            args += [flag, str(value)]
    return args


def run_loadgen(
    args: list[str], env: dict[str, str], log_path: Path, cpus: str | None, timeout: float
) -> dict[str, Any]:
    """Run a one-shot mode (handshakes, echo) to its single JSON result."""
    process = LineProcess(args, env, log_path, cpus)
    try:
        return process.read(timeout)
    finally:
        process.stop()


class FanoutClients(LineProcess):
    """N sockets held open by one loadgen process, recording broadcast arrivals."""

    def opened(self, timeout: float) -> dict[str, Any]:
        return self.read(timeout)

    def mark(self) -> None:
        """Start the client's CPU count for the next broadcast (sent right after this)."""
        self.write(json.dumps({"cmd": "mark"}))
        self.read(30)

    def expect(self, seqs: list[int], timeout: float, raw: bool = False) -> dict[str, Any]:
        """Arrivals of these broadcasts at every socket; `raw`: every latency too."""
        self.write(json.dumps({"cmd": "expect", "seqs": seqs, "timeout": timeout, "raw": raw}))
        return self.read(timeout + 30)

    def bytes_read(self) -> dict[str, Any]:
        """Bytes received so far over all sockets: frames and (--wire-bytes) TCP payload."""
        self.write(json.dumps({"cmd": "bytes"}))
        return self.read(30)

    def close(self) -> dict[str, Any]:
        self.write(json.dumps({"cmd": "close"}))
        result = self.read(60)
        self.process.wait(timeout=10)
        return result


class FanoutGroup:
    """One set of fan-out sockets spread over several loadgen processes, driven as one: each
    command goes to every process before any answer is read (they wait side by side), and the
    answers are merged into one process's (bench/merge.py)."""

    def __init__(self, members: list[FanoutClients]):
        self.members = members

    def _all(self, command: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        for member in self.members:
            member.write(json.dumps(command))
        return [member.read(timeout) for member in self.members]

    def opened(self, timeout: float) -> dict[str, Any]:
        return merge.merge_opened([member.read(timeout) for member in self.members])

    def mark(self) -> None:
        self._all({"cmd": "mark"}, 30)

    def expect(self, seqs: list[int], timeout: float) -> dict[str, Any]:
        command = {"cmd": "expect", "seqs": seqs, "timeout": timeout, "raw": True}
        return merge.merge_rounds(self._all(command, timeout + 30))

    def bytes_read(self) -> dict[str, Any]:
        answers = self._all({"cmd": "bytes"}, 30)
        return {
            field: None if answers[0][field] is None else sum(a[field] for a in answers)
            for field in ("frame_bytes", "wire_bytes")
        }

    def close(self) -> dict[str, Any]:
        answers = self._all({"cmd": "close"}, 60)
        for member in self.members:
            member.process.wait(timeout=10)
        return merge.merge_closed(answers)

    def stop(self) -> None:
        for member in self.members:
            member.stop()


class Trigger(LineProcess):
    """bench/trigger.py: sends broadcasts the way a peer's own code does."""

    def __init__(self, kind: str, env: dict[str, str], log_path: Path, *extra: str):
        super().__init__([sys.executable, "-m", "bench.trigger", kind, *extra], env, log_path, None)
        self.read(60)  # {"ready": true}: Django is set up, connections are made

    def send(self, first_seq: int, count: int = 1) -> dict[str, Any]:
        self.write(f"{first_seq} {count}")
        return self.read(120)
