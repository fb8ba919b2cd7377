"""Log lines that anyone can cause cheaply, at most once per client address a minute.

A WebSocket to an unknown path (realtime/websocket/unknown.py) and a request with a Host header
outside ALLOWED_HOSTS each cost an attacker one packet; unthrottled, Django logs the second
with a traceback (0.7 KB), which fills a disk from one address. `OncePerInterval` remembers a
bounded number of addresses, so the throttle itself cannot be grown without bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from realtime.server.client_address import request_client_key

LOG_EVERY = 60.0  # seconds: one line per client address at most this often
REMEMBERED_ADDRESSES = 10_000  # beyond this, the oldest are forgotten (memory stays bounded)
DISALLOWED_HOST_LOGGER = "django.security.DisallowedHost"


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


class OncePerAddress(logging.Filter):
    """Lets a Django security record through once a minute per client address, one line long
    (the traceback says nothing an operator needs: the message names the header)."""

    def __init__(self, should_log: OncePerInterval | None = None) -> None:
        super().__init__()
        self.should_log = should_log or OncePerInterval(LOG_EVERY)

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        address = request_client_key(getattr(request, "META", {})) or "unknown"
        if not self.should_log(address):
            return False
        record.msg = f"{record.getMessage()[:300]} (from {address}; said once a minute per address)"
        record.args = ()
        record.exc_info = record.exc_text = None
        return True


def quiet_disallowed_host_logs() -> None:
    """Install the filter on Django's DisallowedHost logger (once: AppConfig.ready)."""
    logger = logging.getLogger(DISALLOWED_HOST_LOGGER)
    if not any(isinstance(each, OncePerAddress) for each in logger.filters):
        logger.addFilter(OncePerAddress())
