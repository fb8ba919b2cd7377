"""A socket's `publish`: checked, rate-limited, stored once per client id, then answered.

The rules themselves are realtime.messaging.client_publish; this is the socket's side: the
message's shape (realtime.wire), the publisher's rates, its share of the publish threads, one
trip to such a thread (never the database thread the worker shares) for the user as stored
now, the receipt and the app's `publish` function, within a deadline, and the answer:
`published` with the offset, or an `error` naming the publish's topic and id.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import redis
from channels.db import database_sync_to_async
from django.db import DatabaseError

from realtime import wire
from realtime.common.addresses import scope_client_key
from realtime.conf import conf
from realtime.messaging import client_publish
from realtime.messaging.client_publish import Publisher, PublishRefused, Stored, publish_rate
from realtime.messaging.rechecks import current_user
from realtime.ops import metrics
from realtime.server.prometheus import child
from realtime.websocket.calls import HandlerThreads

logger = logging.getLogger("realtime.websocket.publishing")


async def publish(consumer: Any, message: dict[str, Any]) -> None:
    """Answer a client's `publish` on `consumer`'s socket."""
    try:
        request = wire.publish_request(message)
    except wire.ProtocolError as exc:
        await refuse(consumer, message, exc.code, exc.detail)
        return
    if not await publish_rate.allows(rate_key(consumer), request.topic):
        detail = "Too many publishes to this topic: slow down."
        await refuse(consumer, message, "rate_limited", detail)
        return
    try:
        publisher, data, stored = await in_publish_thread(consumer, request)
        if request.ephemeral:
            await client_publish.send_ephemeral(
                request.topic, data, request.event, publisher, request.id, consumer.socket_id
            )
    except PublishRefused as exc:
        await refuse(consumer, message, exc.code, exc.detail)
        return
    except Busy:
        detail = "Your earlier publishes are still running: send this one again later."
        await refuse(consumer, message, "unavailable", detail)
        return
    except TimeoutError:
        detail = "The topic's publish function took too long: send it again, same id, later."
        await refuse(consumer, message, "timeout", detail)
        return
    except (DatabaseError, redis.RedisError, OSError) as exc:
        logger.warning("A publish to %s failed: %s", request.topic, exc)
        detail = "The server cannot send it now: send it again, same id, later."
        await refuse(consumer, message, "unavailable", detail)
        return
    outcome = "ephemeral" if stored is None else "repeated" if stored.repeated else "stored"
    child(metrics.PUBLISHES, outcome).inc()
    if request.id:
        offset = None if stored is None else stored.offset
        await consumer.send(text_data=wire.published(request.topic, request.id, offset))


_threads: HandlerThreads | None = None


class Busy(Exception):
    """The publisher's share of the publish threads stayed taken until the deadline."""


class Shares:
    """Each publisher's share of the publish threads (a user over all its sockets, or an
    anonymous client's address): half of them, at least one, so that one whose publishes
    hang (a topic's `publish` calling a service that does not answer) never holds them all.
    A publish waits for its publisher's share (its earlier publishes run first) until the
    deadline, and holds it until its thread is done, past its deadline too."""

    def __init__(self) -> None:
        self.slots: dict[str, asyncio.Semaphore] = {}
        self.users: Counter[str] = Counter()  # publishes holding or waiting for a share

    async def take(self, who: str, timeout: float) -> None:
        """Wait for a place in `who`'s share; Busy after `timeout` seconds."""
        size = max(1, conf.REALTIME_PUBLISH_THREADS // 2)
        slot = self.slots.setdefault(who, asyncio.Semaphore(size))
        self.users[who] += 1
        try:
            await asyncio.wait_for(slot.acquire(), timeout)
        except TimeoutError:
            self._forget(who)
            raise Busy from None
        except BaseException:  # its socket closed while it waited
            self._forget(who)
            raise

    def give_back(self, who: str) -> None:
        self.slots[who].release()
        self._forget(who)

    def _forget(self, who: str) -> None:
        self.users[who] -= 1
        if self.users[who] <= 0:
            del self.users[who], self.slots[who]


shares = Shares()


def publish_threads() -> HandlerThreads:
    """This process's threads for topics' `publish` functions (REALTIME_PUBLISH_THREADS)."""
    global _threads
    if _threads is None:
        _threads = HandlerThreads(conf.REALTIME_PUBLISH_THREADS, name="realtime-publish")
    return _threads


async def in_publish_thread(
    consumer: Any, request: wire.PublishRequest
) -> tuple[Publisher, Any, Stored | None]:
    """accept_and_store() in a publish thread, never the database thread the worker shares
    (an app's `publish` that calls a slow service would freeze every subscribe and sign-out
    check), within REALTIME_RPC_TIMEOUT: Busy while the publisher's share stays taken,
    TimeoutError when the publish itself takes too long. One past its deadline still runs
    to its end in its thread, holding its place in the share until then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + conf.REALTIME_RPC_TIMEOUT
    who = rate_key(consumer)
    await shares.take(who, conf.REALTIME_RPC_TIMEOUT)
    run = database_sync_to_async(
        accept_and_store, thread_sensitive=False, executor=publish_threads()
    )
    task = asyncio.ensure_future(run(consumer, request))

    def ended(task: asyncio.Future[Any]) -> None:
        shares.give_back(who)
        if not task.cancelled():
            task.exception()  # retrieved: one past its deadline was answered already

    task.add_done_callback(ended)
    return await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - loop.time()))


def accept_and_store(
    consumer: Any, request: wire.PublishRequest
) -> tuple[Publisher, Any, Stored | None]:
    """In a publish thread: the publisher as stored now; a repeated id's first offset, or the
    topic's rules, then the message stored (None for an ephemeral one)."""
    user = current_user(consumer)
    publisher = client_publish.publisher_of(user, consumer.socket_id)
    sent = client_publish.digest(request.topic, request.data, request.event)
    if not request.ephemeral:
        repeat = client_publish.repeat_of(publisher, request.topic, request.id, sent)
        if repeat is not None:
            return publisher, None, repeat
    data = client_publish.accept(user, request.topic, request.data, request.event)
    if request.ephemeral:
        return publisher, data, None
    stored = client_publish.store_new(
        publisher, request.topic, request.id, sent, data, request.event
    )
    return publisher, data, stored


def rate_key(consumer: Any) -> str:
    """Whose publish rate a socket spends: its user's, else its client address's."""
    user = consumer.scope.get("user")
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return f"address:{scope_client_key(consumer.scope) or consumer.socket_id}"


async def refuse(consumer: Any, message: dict[str, Any], code: str, detail: str) -> None:
    child(metrics.PUBLISHES, code).inc()
    topic, client_id = message.get("topic"), message.get("id")
    await consumer.send(
        text_data=wire.publish_error(
            code,
            topic if isinstance(topic, str) else None,
            client_id if isinstance(client_id, str) else None,
            detail,
        )
    )
