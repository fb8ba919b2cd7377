"""Per-connection limits for WebSockets, as ASGI middleware (documented in docs/security.md).

- `ConnectionCapMiddleware`: at most REALTIME_WS_MAX_PER_CLIENT open sockets per client
  address in this process; the next one is accepted and closed with 1013 (try again later).
- `RateLimitMiddleware`: a token bucket per socket (REALTIME_WS_RATE messages per second,
  REALTIME_WS_BURST at once). A message over it is dropped and answered with the error
  `rate_limited`; after twice the burst dropped without a pause, the socket is closed with 1008.
- `IdleTimeoutMiddleware`: a socket that sends nothing for REALTIME_WS_IDLE_TIMEOUT seconds
  is closed with 4000.

Each wraps `receive` (or the whole connection) so the consumer never sees what was refused,
and each reads its setting per connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from realtime import wire
from realtime.common.addresses import scope_client_key
from realtime.common.close_codes import IDLE_TIMEOUT, POLICY_VIOLATION, TRY_AGAIN_LATER
from realtime.common.rates import TokenBucket
from realtime.conf import conf
from realtime.ops import metrics
from realtime.server import prometheus
from realtime.server.prometheus import child
from realtime.websocket.middleware import accept_then_close

logger = logging.getLogger("realtime.websocket.limits")


Receive = Callable[[], Awaitable[dict[str, Any]]]

open_per_client: Counter[str] = Counter()


def client_address(scope: dict[str, Any]) -> str | None:
    """The client's address bucket (IPv6: its /64), as the server decided it from the transport
    and the trusted proxies (realtime/server/client_address.py); None without one."""
    return scope_client_key(scope) or None


class ConnectionCapMiddleware:
    """Refuse a client address's socket beyond REALTIME_WS_MAX_PER_CLIENT open in this process."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Any) -> Any:
        limit = conf.REALTIME_WS_MAX_PER_CLIENT
        address = client_address(scope) if scope["type"] == "websocket" else None
        if address is None or limit <= 0:
            return await self.app(scope, receive, send)
        if open_per_client[address] >= limit:
            logger.warning(
                "Refused a WebSocket from %s: %d already open (%d).",
                address,
                limit,
                TRY_AGAIN_LATER,
            )
            prometheus.refuse("sockets_per_address")
            reason = "Too many connections from your address"
            return await accept_then_close(receive, send, TRY_AGAIN_LATER, reason)
        open_per_client[address] += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            open_per_client[address] -= 1
            if open_per_client[address] <= 0:
                del open_per_client[address]


class RateLimitMiddleware:
    """Drop incoming messages over the rate with an error reply; close 1008 if it goes on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Any) -> Any:
        rate, burst = conf.REALTIME_WS_RATE, conf.REALTIME_WS_BURST
        if scope["type"] != "websocket" or rate <= 0:
            return await self.app(scope, receive, send)
        bucket = TokenBucket(rate, max(burst, 1))

        async def limited_receive() -> dict[str, Any]:
            while True:
                event = await receive()
                if event["type"] != "websocket.receive" or bucket.take():
                    return event
                child(metrics.MESSAGES, "in", "rate_limited").inc()
                if bucket.dropped > 2 * bucket.burst:
                    logger.warning(
                        "Closed a flooding WebSocket from %s (%d).",
                        describe(scope),
                        POLICY_VIOLATION,
                    )
                    return await close(send, POLICY_VIOLATION, "Rate limit exceeded")
                child(metrics.MESSAGES, "out", "error").inc()
                detail = f"Too many messages: this one was dropped. At most {rate} a second."
                answer = wire.dropped(event.get("text"), detail)
                await send({"type": "websocket.send", "text": answer})

        return await self.app(scope, limited_receive, send)


class IdleDeadline:
    """`asyncio.timeout` around each wait for the client, with one timer per socket instead of
    one per message: a receive only notes when it started waiting, and the timer, when it
    fires early, moves itself to that moment plus the timeout. (A timer per message cost
    5 us of the ~90 us an echo takes; bench/results.)"""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.waiting_since = self.loop.time()
        self.waiter: asyncio.Task[Any] | None = None
        self.expired = False
        self.timer = self.loop.call_at(self.waiting_since + timeout, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        if self.waiter is None:  # the consumer is busy, not waiting: not idle
            self.timer = self.loop.call_at(now + self.timeout, self._check)
        elif now < self.waiting_since + self.timeout:
            self.timer = self.loop.call_at(self.waiting_since + self.timeout, self._check)
        else:
            self.expired = True
            self.waiter.cancel()

    async def receive(self, receive: Receive) -> dict[str, Any]:
        """The client's next event; TimeoutError after `timeout` seconds without one."""
        self.waiting_since = self.loop.time()
        self.waiter = task = asyncio.current_task(self.loop)
        try:
            return await receive()
        except asyncio.CancelledError:
            # Ours, unless the task was also cancelled from elsewhere (as asyncio.timeout does).
            if self.expired and task is not None and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            self.waiter = None

    def cancel(self) -> None:
        self.timer.cancel()


class IdleTimeoutMiddleware:
    """Close a socket with 4000 when nothing arrives from the client for the idle timeout.

    daphne's own pings keep a silent TCP connection known to be alive; whether a client that
    says nothing may hold a socket is the application's decision, made here.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Any) -> Any:
        timeout = conf.REALTIME_WS_IDLE_TIMEOUT
        if scope["type"] != "websocket" or timeout <= 0:
            return await self.app(scope, receive, send)
        deadline = IdleDeadline(timeout)

        async def receive_or_idle() -> dict[str, Any]:
            try:
                return await deadline.receive(receive)
            except TimeoutError:
                return await close(send, IDLE_TIMEOUT, f"Idle for {timeout} s")

        try:
            return await self.app(scope, receive_or_idle, send)
        finally:
            deadline.cancel()


async def close(send: Any, code: int, reason: str) -> dict[str, Any]:
    """Close the socket, and tell the consumer it is gone so that it cleans up and stops."""
    await send({"type": "websocket.close", "code": code, "reason": reason})
    return {"type": "websocket.disconnect", "code": code}


def describe(scope: dict[str, Any]) -> str:
    return client_address(scope) or "an unknown address"


def websocket_limits(app: Any) -> Any:
    """The limits in the order they apply: address cap at connect, then idle and rate."""
    return ConnectionCapMiddleware(IdleTimeoutMiddleware(RateLimitMiddleware(app)))
