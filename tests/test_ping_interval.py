"""The ping interval (`serve --ping-interval`, REALTIME_WS_PING_INTERVAL): real `serve` workers
ping an idle WSS client at the interval asked, and not before; a wrong value is refused.
Each server is watched for several intervals (docs/deployment.md, "Keep-alive")."""

from __future__ import annotations

import subprocess

from websockets.frames import Opcode

from tests.helpers import ROOT, free_port
from tests.test_serve import serve_args
from tests.test_timeouts import idle_frames

WATCHED = 7.0  # seconds: three sweeps of 2 s and more


def pings_in(port: int, client_tls, seconds: float) -> int:
    """How many pings an idle WSS client of the server on `port` receives in `seconds`."""
    frames = idle_frames(port, client_tls, seconds)
    return sum(getattr(frame, "opcode", None) == Opcode.PING for frame in frames)


def test_the_option_sets_the_interval_over_the_setting(start, client_tls):
    port = free_port()
    start(serve_args(port, 1, "--ping-interval", "1"), port, REALTIME_WS_PING_INTERVAL="60")
    assert pings_in(port, client_tls, WATCHED) >= 3  # a ping at each 2 s sweep


def test_without_the_option_the_setting_sets_the_interval(start, client_tls):
    port = free_port()
    start(serve_args(port, 1), port, REALTIME_WS_PING_INTERVAL="3")
    # Due every 3 s, sent on the 2 s sweeps: 1 or 2 in 7 s (every 1 s: 3; the default, 20 s: 0).
    assert 1 <= pings_in(port, client_tls, WATCHED) <= 2


def test_an_interval_below_one_second_is_refused(server_env):
    result = subprocess.run(
        serve_args(free_port(), 1, "--ping-interval", "0"),
        cwd=ROOT,
        env=server_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--ping-interval must be at least 1 second." in result.stderr
