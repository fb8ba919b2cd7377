"""Log lines that anyone can cause cheaply, at most once per client address a minute.

A WebSocket to an unknown path (realtime/websocket/unknown.py) and a request with a Host header
outside ALLOWED_HOSTS each cost an attacker one packet; unthrottled, Django logs the second
with a traceback (0.7 KB), which fills a disk from one address. `OncePerInterval`
(realtime/common/rates.py, which the server floor uses too) remembers a bounded number
of addresses, so the throttle itself cannot be grown without bound.
"""

from __future__ import annotations

import logging

from realtime.common.addresses import request_client_key
from realtime.common.rates import LOG_EVERY, OncePerInterval

DISALLOWED_HOST_LOGGER = "django.security.DisallowedHost"


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
