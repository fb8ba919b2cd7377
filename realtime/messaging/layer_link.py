"""The worker's one channel on the channel layer, kept open and checked for the worker's life.

The fan-out (realtime.messaging.fanout) hears every broadcast, sign-out and recheck through
this channel. The link opens it, receives on it for ever (never cancelled), joins and renews
the groups, and checks through its own probe group that an event sent still comes back; when
a check fails it has lost the layer, and tells the fan-out, and again when it has it back
(docs/reliability.md, "How the fan-out stays subscribed").
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import redis

from realtime.conf import conf
from realtime.messaging.layer import channel_layer
from realtime.messaging.streams import TOPICS_GROUP
from realtime.ops import metrics
from realtime.websocket.sessions import SESSIONS_GROUP

# The fan-out's log, as operators know it (docs/reliability.md), whichever part of it writes.
logger = logging.getLogger("realtime.messaging.fanout")

JOIN_TIMEOUT = 5.0
RETRY_DELAY = 1.0  # seconds between attempts while the channel layer fails
CHECK_ATTEMPTS = 3  # a check's tries in a row when the connection fails
PROBE = "realtime.fanout.probe"


def rejoin_interval() -> float:
    """Seconds between renewals of the fan-out's group memberships (REALTIME_FANOUT_REJOIN)."""
    return float(conf.REALTIME_FANOUT_REJOIN)


def check_interval() -> float:
    """Seconds between two checks that the fan-out hears the layer (REALTIME_FANOUT_CHECK)."""
    return float(conf.REALTIME_FANOUT_CHECK)


def check_timeout() -> float:
    """Seconds a check, a join or a new channel may take (REALTIME_FANOUT_CHECK_TIMEOUT)."""
    return float(conf.REALTIME_FANOUT_CHECK_TIMEOUT)


def failure_reason(exc: BaseException) -> str:
    """An exception as one short line, for logs and /healthz (no URL: Redis URLs hold passwords)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"timed out after {check_timeout():g} s"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


class LayerLost(ConnectionError):
    """The fan-out cannot hear the channel layer now: a socket would miss what it is sent."""


class Listener(Protocol):
    """What the link tells: each event, and when it loses and regains the layer."""

    def handle(self, event: dict[str, Any]) -> None: ...

    def layer_lost(self) -> int: ...

    def layer_regained(self) -> None: ...


class LayerLink:
    """This worker's channel on the layer, joined to the topics, sessions and probe groups."""

    def __init__(
        self, listener: Listener, alongside: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        self.listener = listener
        self.alongside = alongside  # runs as long as the link (the sessions' checks)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.joined: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        # The channel layer as the fan-out hears it: None, or why not and since when.
        self.lost: str | None = None
        self.lost_since = 0.0
        self.probe_group = f"realtime.fanout.probe.{uuid.uuid4().hex}"
        self.probe_token = 0
        self.probe_waiter: asyncio.Future[None] | None = None

    async def ready(self) -> None:
        """Start the link if needed and wait until its groups are joined.

        Raises LayerLost while the layer cannot be heard, TimeoutError when the groups cannot
        be joined in time.
        """
        self._ensure_running()
        assert self.joined is not None
        self.raise_if_lost()
        if not self.joined.is_set():
            await asyncio.wait_for(asyncio.shield(self.joined.wait()), JOIN_TIMEOUT)

    def raise_if_lost(self) -> None:
        if self.lost is not None:
            raise LayerLost(self.lost)

    def problem(self) -> str | None:
        """Why the fan-out cannot hear the layer now (for /healthz), or None."""
        if self.lost is None:
            return None
        return f"lost the channel layer {time.monotonic() - self.lost_since:.0f} s ago: {self.lost}"

    # --- Receiving -----------------------------------------------------------------------

    def _ensure_running(self) -> None:
        """Start the link in this event loop, or again if it stopped (and said why)."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop or self.task is None or self.task.done():
            self.loop, self.joined = loop, asyncio.Event()
            self.lost, self.probe_waiter = None, None
            self.task = loop.create_task(self._run())
            self.task.add_done_callback(self._stopped)

    async def _run(self) -> None:
        layer = channel_layer()
        channel = await self._open_channel(layer)
        receiving = asyncio.ensure_future(self._receive_forever(layer, channel))
        keeping = asyncio.ensure_future(self._keep_joined(layer, channel))
        alongside = asyncio.ensure_future(self.alongside())
        tasks = {receiving, keeping, alongside}
        try:
            # None ends but by a bug: then all stop, and the next socket starts them again.
            done, _ = await asyncio.wait(tasks, return_when=FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()

    def _stopped(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("Broadcast fan-out stopped", exc_info=task.exception())
            self.lose(f"the fan-out stopped: {failure_reason(task.exception())}")

    async def _open_channel(self, layer: Any) -> str:
        while True:
            try:
                opening = layer.new_channel("realtime.fanout.")
                return await asyncio.wait_for(opening, check_timeout())
            except Exception as exc:  # noqa: BLE001 - the layer's errors vary; keep going
                self.lose(failure_reason(exc))
                await asyncio.sleep(RETRY_DELAY)

    async def _receive_forever(self, layer: Any, channel: str) -> None:
        """Hand every event of this worker's channel to the fan-out, for the worker's life.

        The receive is never timed out: RedisPubSubChannelLayer deletes a channel whose
        receive() is cancelled, after which group_add() on it raises for ever. Its errors (the
        core layer's, while Redis is down) are retried quietly: the checks say when the fan-out
        is deaf, and the core layer keeps an event in Redis until a receive takes it.
        """
        while True:
            try:
                event = await layer.receive(channel)
            except Exception:  # noqa: BLE001 - the layer's errors vary; keep going
                await asyncio.sleep(RETRY_DELAY)
                continue
            try:
                self.listener.handle(event)
            except Exception:  # noqa: BLE001 - one bad event must not deafen the worker
                logger.exception("Broadcast fan-out could not handle an event; dropped it")

    # --- Joining and checking ------------------------------------------------------------

    async def _keep_joined(self, layer: Any, channel: str) -> None:
        """Join the groups, then prove every check interval that an event sent to a group
        comes back; rejoin every rejoin interval, and after any failure."""
        rejoin_at = 0.0
        while True:
            now = asyncio.get_running_loop().time()
            rejoin = self.lost is not None or now >= rejoin_at
            failure = await self._check(layer, channel, rejoin)
            if failure is None:
                rejoin_at = now + rejoin_interval() if rejoin else rejoin_at
                self.regain()
            else:
                self.lose(failure)
            await asyncio.sleep(check_interval())

    async def _check(self, layer: Any, channel: str, rejoin: bool) -> str | None:
        """None when the fan-out (re)joined if asked and its probe came back, else why not.

        A connection error is tried again at once: each pooled connection to a Redis that
        restarted fails once, and one stale connection is no outage.
        """
        failure = ""
        for _ in range(CHECK_ATTEMPTS):
            try:
                if rejoin:
                    await asyncio.wait_for(self._join(layer, channel), check_timeout())
                await self._probe(layer)
                return None
            except redis.ConnectionError as exc:
                failure = failure_reason(exc)
            except Exception as exc:  # noqa: BLE001 - the layer's errors vary
                return failure_reason(exc)
        return failure

    async def _join(self, layer: Any, channel: str) -> None:
        # group_add() of a member again only renews it: the core layer's membership (a sorted
        # set scored by join time) expires after group_expiry unless renewed, the pub/sub
        # layer's lasts for the process. Nothing is received by anyone else in between.
        for group in [TOPICS_GROUP, SESSIONS_GROUP, self.probe_group]:
            await layer.group_add(group, channel)
        assert self.joined is not None
        if self.lost is None:
            self.joined.set()

    async def _probe(self, layer: Any) -> None:
        """Send an event to this worker's own group and wait for the receive loop to see it:
        the whole path a broadcast takes (group membership, Redis, this worker's channel)."""
        self.probe_token += 1
        waiter = self.probe_waiter = asyncio.get_running_loop().create_future()
        event = {"type": PROBE, "token": self.probe_token}
        try:
            await asyncio.wait_for(self._send_and_wait(layer, event, waiter), check_timeout())
        except TimeoutError:
            raise TimeoutError(
                f"a check sent through the channel layer did not come back within "
                f"{check_timeout():g} s"
            ) from None

    async def _send_and_wait(self, layer: Any, event: dict[str, Any], waiter: Any) -> None:
        await layer.group_send(self.probe_group, event)
        await waiter

    def probe_returned(self, event: dict[str, Any]) -> None:
        waiter = self.probe_waiter
        if waiter is not None and not waiter.done() and event.get("token") == self.probe_token:
            waiter.set_result(None)

    # --- Losing the layer ----------------------------------------------------------------

    def lose(self, reason: str) -> None:
        """The fan-out cannot hear the channel layer: say so once, refuse new sockets until it
        can, and have the fan-out close the signed-in ones, whose sign-outs and access changes
        it would miss."""
        if self.lost is not None:
            self.lost = reason
            return
        self.lost, self.lost_since = reason, time.monotonic()
        metrics.LAYER_LOSSES.inc()
        if self.joined is not None:
            self.joined.clear()
        closed = self.listener.layer_lost()
        logger.error(
            "Broadcast fan-out lost the channel layer (%s); closed %d signed-in socket(s) so "
            "that they reconnect, and refusing new sockets until it is back",
            reason,
            closed,
        )

    def regain(self) -> None:
        if self.lost is None:
            return
        logger.warning(
            "Broadcast fan-out has the channel layer again, after %.0f s",
            time.monotonic() - self.lost_since,
        )
        self.lost = None
        metrics.LAYER_RECONNECTS.inc()
        if self.joined is not None:
            self.joined.set()
        self.listener.layer_regained()
