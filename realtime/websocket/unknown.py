"""WebSockets to a path no consumer serves: refused with 403 and at most one log line per
client address a minute.

Channels' URLRouter raises for an unknown path, and daphne answers 500 with a 2.5 KB traceback
in the log: a cheap way for anyone to fill the disk. This route comes last instead.
"""

from __future__ import annotations

import logging
from typing import Any

from realtime.common.close_codes import POLICY_VIOLATION
from realtime.common.rates import LOG_EVERY, OncePerInterval
from realtime.websocket.limits import client_address

logger = logging.getLogger("realtime.websocket.unknown")

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
    await send({"type": "websocket.close", "code": POLICY_VIOLATION})
