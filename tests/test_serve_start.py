"""`serve` starts only with a database and Redis that answer: otherwise it says which one and
why, and exits, unless told to wait for them (--wait-for-services SECONDS)."""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, wait_for_port
from tests.test_serve import serve_args

pytestmark = pytest.mark.e2e


def run_serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    port = free_port()
    return subprocess.run(
        serve_args(port, 1, *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_a_redis_that_does_not_answer_stops_serve_with_the_reason(server_env):
    env = {**server_env, "REDIS_URL": f"redis://:s3cret@127.0.0.1:{free_port()}/0"}
    started = time.monotonic()
    result = run_serve(env)
    assert result.returncode != 0
    assert "Not starting: Redis (ConnectionError" in result.stderr
    assert "is not answering. Start it, or let serve wait with --wait-for-services" in (
        result.stderr
    )
    assert "s3cret" not in result.stderr + result.stdout
    assert time.monotonic() - started < 30


def test_a_database_that_does_not_answer_stops_serve_too(server_env):
    env = {**server_env, "DATABASE_URL": f"postgres://realtime@127.0.0.1:{free_port()}/realtime"}
    env.pop("DJANGO_DB_PATH", None)
    result = run_serve(env)
    assert result.returncode != 0
    assert "Not starting: the database (OperationalError" in result.stderr


def read_until(process: subprocess.Popen[str], text: str, lines: list[str]) -> None:
    """Read the process's output into `lines`, up to the line that says `text`."""
    while True:
        lines.append(line := process.stdout.readline())
        assert line, "".join(lines)  # the output ended first
        if text in line:
            return


def test_told_to_wait_it_starts_once_redis_answers(server_env, private_redis):
    redis = private_redis()
    redis.stop()  # its port is known: it will start there a moment after serve
    port = free_port()
    args = serve_args(port, 1, "--wait-for-services", "30")
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env={**server_env, "REDIS_URL": redis.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        read_until(process, "Waiting up to 30 s for Redis", lines)  # a first check failed
        assert process.poll() is None, "".join(lines)
        redis.start()
        wait_for_port(port, process, 30)
    finally:
        process.terminate()
        output = "".join(lines) + process.communicate(timeout=30)[0]
    assert "Waiting up to 30 s for Redis (ConnectionError" in output
    assert "Serving https://" in output


def test_told_to_wait_it_gives_up_when_the_wait_runs_out(server_env):
    env = {**server_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    started = time.monotonic()
    result = run_serve(env, "--wait-for-services", "3")
    waited = time.monotonic() - started
    assert result.returncode != 0
    assert "Waiting up to 3 s for Redis (ConnectionError" in result.stdout
    assert "Not starting: Redis (ConnectionError" in result.stderr
    assert 3 <= waited < 30  # it waited the 3 s, and no longer than a startup takes
    assert "Serving https://" not in result.stdout


def test_each_shard_is_checked_and_named(server_env, private_redis):
    up = private_redis()
    down = f"redis://127.0.0.1:{free_port()}/0"
    result = run_serve({**server_env, "REDIS_URL": f"{up.url},{down}"})
    assert result.returncode != 0
    assert "Not starting: Redis shard 2 of 2 (ConnectionError" in result.stderr
    assert "shard 1" not in result.stderr


def serve_under_limit(env: dict[str, str], soft: int, hard: int, log) -> subprocess.Popen:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    port = free_port()
    process = subprocess.Popen(
        serve_args(port, 1), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=limit,
    )  # fmt: skip
    wait_for_port(port, process, 30)
    return process


def open_files_limit(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    return int(next(line for line in limits if line.startswith("Max open files")).split()[3])


def worker_of(process: subprocess.Popen, log_path: Path) -> int:
    deadline = time.monotonic() + 30
    while " is ready" not in log_path.read_text():
        assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
        time.sleep(0.1)
    return int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0])


def test_serve_raises_its_descriptor_limit_to_the_hard_limit_for_its_workers(server_env, tmp_path):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # 20,000 in this sandbox
    assert hard >= 16384, "this test needs a hard limit of at least 64 addresses at the cap"
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = serve_under_limit(server_env, 1024, hard, log)
    try:
        assert open_files_limit(worker_of(process, log_path)) == hard
        assert "Warning: Each worker may open" not in log_path.read_text()
    finally:
        process.terminate()
        process.wait(20)


def test_serve_warns_when_the_hard_limit_is_low_for_the_cap(server_env, tmp_path):
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = serve_under_limit(server_env, 1024, 1024, log)
    try:
        worker_of(process, log_path)
        text = log_path.read_text()
        assert (
            "Warning: Each worker may open 1024 files: 4 client addresses at the cap of 256 "
            "connections (REALTIME_MAX_CONNECTIONS_PER_ADDRESS) fill it" in text
        )
        assert "Raise it to 16384 or more" in text
    finally:
        process.terminate()
        process.wait(20)
