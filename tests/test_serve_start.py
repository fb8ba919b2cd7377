"""`serve` starts only with a database and Redis that answer: otherwise it says which one and
why, and exits, unless told to wait for them (--wait-for-services SECONDS)."""

from __future__ import annotations

import subprocess
import time

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
    try:
        time.sleep(3)
        assert process.poll() is None, process.stdout.read()
        redis.start()
        wait_for_port(port, process, 30)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "Waiting up to 30 s for Redis (ConnectionError" in output
    assert "Serving https://" in output


def test_each_shard_is_checked_and_named(server_env, private_redis):
    up = private_redis()
    down = f"redis://127.0.0.1:{free_port()}/0"
    result = run_serve({**server_env, "REDIS_URL": f"{up.url},{down}"})
    assert result.returncode != 0
    assert "Not starting: Redis shard 2 of 2 (ConnectionError" in result.stderr
    assert "shard 1" not in result.stderr
