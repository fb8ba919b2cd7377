"""Periodic work the app asks the server to run, so that the server need not import the app.

The app registers a coroutine function and its interval (`every()`), typically when its ASGI
application is built; RealtimeServer runs each one on that interval once it serves, and logs
a failure without stopping the next run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Periodic = Callable[[], Awaitable[None]]

periodic: dict[Periodic, float] = {}


def every(interval: float, work: Periodic) -> None:
    """Run `work()` every `interval` seconds in each server process (once per function)."""
    periodic[work] = interval
