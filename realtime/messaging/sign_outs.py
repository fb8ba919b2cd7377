"""This worker's signed-in sockets, by session and by user, and ending them.

A sign-out, or a change of a user's access, reaches every worker as one `realtime.logout`
event (realtime.websocket.sessions): the worker checks the topic subscriptions of that
session's or user's sockets again (realtime.messaging.rechecks), then closes them (4001).
Sign-outs are remembered for a while, for the sockets still registering when they came. A
session that ends without a sign-out (it expired, or left its store) is found by a queue of
the signed-in sockets ordered by when to look at their session again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async

from realtime import wire
from realtime.common import close_codes
from realtime.conf import conf
from realtime.messaging.delivery import Streams, spawn
from realtime.messaging.layer_link import check_interval
from realtime.messaging.rechecks import app_topics, current_user, forbidden_topics
from realtime.websocket.sessions import SessionChecks, SignedIn, session_end

# The fan-out's log, as operators know it (docs/reliability.md), whichever part of it writes.
logger = logging.getLogger("realtime.messaging.fanout")

# A socket registers just after its welcome; a sign-out processed in between would miss it.
# Sign-outs are remembered this long, and a registering socket is closed if its session signed
# out (a signed-out session is gone: any socket that has it read it before), or if its user's
# access changed after the socket connected (one that connected later read the new access).
SIGN_OUT_MEMORY = 30.0
SIGN_OUTS_REMEMBERED = 10_000  # bounded memory, whatever the rate of sign-outs
LOST_REASON = "Reconnect: the server lost its channel layer"


def session_check_interval() -> float:
    """Seconds at most between two looks at a signed-in socket's session
    (REALTIME_SESSION_CHECK)."""
    return float(conf.REALTIME_SESSION_CHECK)


class SignOuts:
    """The signed-in sockets of this worker, and the sign-outs and session ends that close them."""

    def __init__(self, streams: Streams, unregister: Callable[[Any], None]) -> None:
        self.streams = streams
        self.unregister = unregister  # the fan-out's: forgets a socket everywhere
        # "session:<digest>" and "user:<pk>": the signed-in consumers of each, and back.
        self.signed_in: dict[str, set[Any]] = {}
        self.keys_of: dict[Any, tuple[str, ...]] = {}
        # Recent sign-outs and access changes: key -> wall-clock time, oldest first.
        self.recent_sign_outs: OrderedDict[str, float] = OrderedDict()
        self.wall_clock = time.time
        # Open signed-in sockets by when to look at their session again.
        self.session_checks = SessionChecks()

    def add(self, consumer: Any, signed_in: SignedIn, connected_at: datetime) -> None:
        """Know a registered socket by its session and user; close it (4001) if either signed
        out since it connected, else look at its session again by its end."""
        self.keys_of[consumer] = keys = signed_in.registry_keys()
        for key in keys:
            self.signed_in.setdefault(key, set()).add(consumer)
        if self._signed_out_since(keys, connected_at.timestamp()):
            self.unregister(consumer)
            spawn(consumer.close(code=close_codes.SIGNED_OUT, reason="Signed out"))
        elif signed_in.key:
            self._look_at_session_by(consumer, signed_in.key, signed_in.ends_at)

    def forget(self, consumer: Any) -> None:
        """A socket closed or was ended: never look at it again."""
        self.session_checks.forget(consumer)
        for key in self.keys_of.pop(consumer, ()):
            self.signed_in[key].discard(consumer)
            if not self.signed_in[key]:
                del self.signed_in[key]

    # --- Sign-outs -----------------------------------------------------------------------

    def sign_out(self, key: str) -> int:
        """End this worker's sockets of a session that signed out, or of a user whose access
        changed: their topic subscriptions are checked again (unsubscribed if no longer
        allowed), then they close (4001). Returns how many."""
        self._remember_sign_out(key)
        consumers = list(self.signed_in.get(key, ()))
        for consumer in consumers:
            # A signed subscription is left to its name: checked again when the socket the
            # client opens next subscribes (realtime.messaging.signed_streams).
            subscriptions = app_topics(self.streams, consumer, signed=False)
            self.unregister(consumer)
            spawn(self._end_signed_in(consumer, subscriptions, key.startswith("session:")))
        return len(consumers)

    async def _end_signed_in(self, consumer: Any, subscribed: list[str], gone: bool) -> None:
        if subscribed:  # else no reason to wait for the database
            user = await database_sync_to_async(current_user)(consumer, gone)
            for topic in await database_sync_to_async(forbidden_topics)(user, subscribed):
                await consumer.send(text_data=wire.unsubscribed(topic, "forbidden"))
        await consumer.close(code=close_codes.SIGNED_OUT, reason="Signed out")

    def _remember_sign_out(self, key: str) -> None:
        now = self.wall_clock()
        self.recent_sign_outs.pop(key, None)
        self.recent_sign_outs[key] = now
        while self.recent_sign_outs and (
            len(self.recent_sign_outs) > SIGN_OUTS_REMEMBERED
            or next(iter(self.recent_sign_outs.values())) < now - SIGN_OUT_MEMORY
        ):
            self.recent_sign_outs.popitem(last=False)

    def _signed_out_since(self, keys: tuple[str, ...], connected: float) -> bool:
        for key in keys:
            handled = self.recent_sign_outs.get(key)
            if handled is not None and (key.startswith("session:") or handled > connected):
                return True
        return False

    def close_signed_in(self) -> int:
        """Close every signed-in socket with 1013: it reconnects once the layer is back."""
        consumers = list(self.keys_of)
        for consumer in consumers:
            self.unregister(consumer)
            spawn(consumer.close(code=close_codes.TRY_AGAIN_LATER, reason=LOST_REASON))
        return len(consumers)

    # --- Sessions that end ---------------------------------------------------------------

    def _look_at_session_by(self, consumer: Any, key: str, ends_at: float) -> None:
        when = min(ends_at, self.wall_clock() + session_check_interval())
        self.session_checks.look_by(consumer, key, when)

    async def end_sessions_forever(self) -> None:
        while True:
            await asyncio.sleep(check_interval())
            try:
                await self.end_sessions()
            except Exception:  # noqa: BLE001 - the database may be away; look again later
                logger.exception("Could not look at the sessions of signed-in sockets")

    async def end_sessions(self) -> int:
        """Close (4001) the sockets whose session has ended (expired, or deleted from its
        store without a sign-out); look at the others again by their end. Returns how many
        were closed."""
        now = self.wall_clock()
        due = self.session_checks.take_due(now)
        if not due:
            return 0
        keys = {key for _, key in due}
        ends = await database_sync_to_async(lambda: {key: session_end(key) for key in keys})()
        closed = 0
        for consumer, key in due:
            if consumer not in self.keys_of:
                continue
            ends_at = ends[key]
            if ends_at is None or ends_at <= now:
                self.unregister(consumer)
                spawn(consumer.close(code=close_codes.SIGNED_OUT, reason="Session ended"))
                closed += 1
            else:
                self._look_at_session_by(consumer, key, ends_at)
        return closed
