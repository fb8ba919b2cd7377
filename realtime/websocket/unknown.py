"""WebSockets to a path no consumer serves: refused with 403 and at most one log line per
client address a minute.

Channels' URLRouter raises for an unknown path, and daphne answers 500 with a 2.5 KB traceback
in the log: a cheap way for anyone to fill the disk. This route comes last instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from realtime.websocket.limits import client_address

logger = logging.getLogger("realtime.websocket.unknown")

LOG_EVERY = 60.0  # seconds: one line per client address at most this often
REMEMBERED_ADDRESSES = 10_000  # beyond this, the oldest are forgotten (memory stays bounded)


class OncePerInterval:
    """Whether to log for a key now: once per `interval` seconds per key, in bounded memory."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self.last: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = self.clock()
        if now - self.last.get(key, -self.interval) < self.interval:
            return False
        self.last.pop(key, None)
        self.last[key] = now
        if len(self.last) > REMEMBERED_ADDRESSES:
            del self.last[next(iter(self.last))]
        return True


should_log = OncePerInterval(LOG_EVERY)


async def refuse_unknown_path(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Close before accepting (daphne answers 403): nothing here for that path."""
    await receive()  # websocket.connect
    address = client_address(scope) or "unknown"
    if should_log(address):
        logger.warning(
            "Refused a WebSocket to %r from %s: no such endpoint (403; said once a minute "
            "per address)",
            scope.get("path", "")[:200],
            address,
        )
    await send({"type": "websocket.close", "code": 1008})
