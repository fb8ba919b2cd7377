"""daphne's timeout sweep, visiting only the connections that have a check due.

Every 2 s daphne calls `check_timeouts()` on every connection: a WebSocket is pinged once
`ping_interval` (20 s) has passed since its last ping or message, closed once it has been open
`websocket_timeout`, and refused if still connecting after `websocket_connect_timeout`; an HTTP
request gets its own timeouts. With thousands of idle WebSockets, nearly every one of those
calls finds nothing to do: measured with 5,000 idle WSS sockets on two workers, the sweep was a
fifth of their whole CPU cost.

TimeoutSchedule keeps, in a heap, when each connection next needs a look. An open WebSocket
needs none until its next ping (`last_ping + ping_interval`) or its end (`socket_opened +
websocket_timeout`), whichever comes first; everything else (HTTP requests, WebSockets still
connecting or closing) is looked at on every sweep, as daphne does. A look is daphne's own
`check_timeouts()`, so what happens when something is due is unchanged, and so is when it
happens: at the first sweep once it is due. A message from the client moves `last_ping` on
(daphne does that in `onMessage`); the schedule sees it when the old due time comes and puts
the connection back for the new one.

The heap holds weak references: a connection that closed is not kept alive until its turn.
`check_timeouts()`, `last_ping` and `socket_opened` are daphne's undocumented internals: read
through realtime.upstream (WEBSOCKET_PROTOCOL_HOOKS, next_check_due).
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
