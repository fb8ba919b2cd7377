"""daphne's timeout sweep, visiting only the connections that have a check due.

Every 2 s daphne calls `check_timeouts()` on every connection (the keep-alive ping every
`ping_interval`, `websocket_timeout`, `websocket_connect_timeout`, the HTTP timeouts); with
thousands of idle WebSockets nearly every call finds nothing to do. TimeoutSchedule keeps, in a
heap of weak references, when each open WebSocket next needs a look (its next ping or its end);
everything else is looked at on every sweep, as daphne does. A look is daphne's own
`check_timeouts()`, so what happens, and at which sweep, is unchanged; a client's message moves
`last_ping` on: at the old due time the schedule finds the new one and waits for it. daphne's
internals are read through realtime.upstream (WEBSOCKET_PROTOCOL_HOOKS, next_check_due).
What it saves: docs/benchmarks.md.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import weakref
from collections.abc import Container
from typing import Any

from realtime.upstream import TIMEOUT_SWEEP_INTERVAL, WebSocketProtocol, next_check_due

SWEEP_INTERVAL = TIMEOUT_SWEEP_INTERVAL  # daphne's own period for timeout_checker

logger = logging.getLogger(__name__)


class TimeoutSchedule:
    """When each connection next needs daphne's `check_timeouts()`."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, weakref.ref[Any]]] = []
        self._order = itertools.count()  # ties never compare the references

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, protocol: Any, now: float) -> None:
        """A new connection: looked at on the next sweep."""
        self._push(protocol, now)

    def sweep(
        self, connections: Container[Any], now: float, ping_interval: float, timeout: float
    ) -> int:
        """Check every connection due before `now` that daphne still lists; returns how many.

        Strictly before, as daphne's own tests are strict: a ping is due once more than
        `ping_interval` has passed."""
        due = []
        while self._heap and self._heap[0][0] < now:
            protocol = heapq.heappop(self._heap)[2]()
            if protocol is not None and protocol in connections:
                due.append(protocol)
        later = []
        for protocol in due:
            try:
                protocol.check_timeouts()
            except Exception:  # daphne's sweep would stop for good; this one goes on
                logger.exception("Timeout check failed for a %s", type(protocol).__name__)
            later.append((protocol, next_look(protocol, now, ping_interval, timeout)))
        # Pushed back only now, so that one due again at once waits for the next sweep.
        for protocol, when in later:
            self._push(protocol, when)
        return len(due)

    def _push(self, protocol: Any, when: float) -> None:
        heapq.heappush(self._heap, (when, next(self._order), weakref.ref(protocol)))


def next_look(protocol: Any, now: float, ping_interval: float, timeout: float) -> float:
    """When `protocol` next has something due: its next ping or its end for an open WebSocket,
    the next sweep (`now`) for anything else."""
    if not isinstance(protocol, WebSocketProtocol) or protocol.state != protocol.STATE_OPEN:
        return now
    return max(next_check_due(protocol, ping_interval, timeout), now)
