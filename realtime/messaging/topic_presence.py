"""Who is connected to a presence topic, over every worker: the list, `join` and `leave`.

Each worker counts its own sockets per user on each presence topic. A user's first socket on a
topic here adds an entry to the topic's sorted set in Redis (`realtime:presence:topic:<name>`,
one member per worker and user, scored by when it expires); its last socket removes it. Every
worker refreshes its entries each third of REALTIME_PRESENCE_TTL, so the entries of a worker
that was killed expire on their own. After each change a `realtime.presence` event tells every
worker to read the set again; each compares it with what it read before and tells its
subscribers `join` (a user's first socket anywhere) or `leave` (its last one). The periodic
read also finds users whose worker died. Without Redis (the in-memory layer) the set is this
process's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from typing import Any

import redis

from realtime import wire
from realtime.conf import conf
from realtime.messaging.delivery import Frame, Subscription, spawn
from realtime.messaging.layer import group_send
from realtime.messaging.redis_client import async_client
from realtime.messaging.streams import TOPICS_GROUP
from realtime.ops import metrics
from realtime.server.prometheus import child

logger = logging.getLogger("realtime.messaging.topic_presence")

KEY_PREFIX = "realtime:presence:topic:"
CHANGED = "realtime.presence"  # the channel layer event: a presence topic changed
Users = dict[str, dict[str, Any]]  # str(pk) -> {"id": pk, "username": ...}


def ttl() -> float:
    return float(conf.REALTIME_PRESENCE_TTL)


def member(worker: str, user: dict[str, Any]) -> str:
    return json.dumps([worker, user["id"], user["username"]])


def users_of(members: list[Any]) -> Users:
    users: Users = {}
    for raw in members:
        _, pk, username = json.loads(raw)
        users[str(pk)] = {"id": pk, "username": username}
    return users


class Presence:
    """This worker's side of presence topics."""

    def __init__(self) -> None:
        self.worker = uuid.uuid4().hex  # a restarted worker's entries are new ones
        self.counts: dict[str, Counter[str]] = {}  # topic -> str(pk) -> sockets here
        self.users: dict[str, dict[str, Any]] = {}  # str(pk) -> {"id", "username"}
        self.views: dict[str, Users] = {}  # topic -> who was there at the last read
        self.reading: dict[str, asyncio.Future[None]] = {}
        self.stale: set[str] = set()
        self.client: Any = None
        self.refresher: asyncio.Task[None] | None = None
        self.subscriptions: Any = None  # topic -> its subscriptions here (set by the fan-out)

    # --- Sockets entering and leaving ------------------------------------------------------

    async def enter(
        self, subscription: Subscription, user: Any, *, sees: bool = True
    ) -> list[dict[str, Any]]:
        """Count a new subscriber's user in; returns who is there now (with it). `sees`:
        whether this subscriber hears `join` and `leave` (sees_presence())."""
        topic = subscription.name
        self._start_refreshing()
        if subscription.presence or subscription.member is not None:  # subscribed again
            subscription.presence = sees
            return list((await self.read(topic)).values())
        first_here = False
        if user is not None and user.is_authenticated:
            pk = str(user.pk)
            subscription.member = pk
            self.users[pk] = {"id": user.pk, "username": user.get_username()}
            counts = self.counts.setdefault(topic, Counter())
            counts[pk] += 1
            first_here = counts[pk] == 1
        try:
            if first_here:
                await self._store(topic, [self.users[subscription.member]])
                await self._announce(topic)
            users = await self.read(topic)
        except (redis.RedisError, OSError) as exc:  # the refresh stores it again later
            logger.warning("Could not read or store presence of %s: %s", topic, exc)
            users = self.views.get(topic) or self.local_users(topic)
        subscription.presence = sees
        return list(users.values())

    def leave(self, subscription: Subscription) -> None:
        """A subscriber left (unsubscribed, closed, or its access ended)."""
        topic, pk = subscription.name, subscription.member
        if not self._has_subscribers(topic):
            self.views.pop(topic, None)
        if pk is None or topic not in self.counts:
            return
        counts = self.counts[topic]
        counts[pk] -= 1
        if counts[pk] <= 0:
            del counts[pk]
            if not counts:
                del self.counts[topic]
            spawn(self._remove(topic, pk))

    async def _remove(self, topic: str, pk: str) -> None:
        try:
            await self._delete(topic, self.users.get(pk, {"id": pk, "username": ""}))
            await self._announce(topic)
            if self._has_subscribers(topic):
                await self.read(topic)
        except (redis.RedisError, OSError) as exc:
            logger.warning("Could not remove a presence entry of %s: %s", topic, exc)

    def local_users(self, topic: str) -> Users:
        return {pk: self.users[pk] for pk in self.counts.get(topic, {})}

    # --- Reading and telling ---------------------------------------------------------------

    def changed(self, topic: str) -> None:
        """Another worker's presence on `topic` changed (a `realtime.presence` event)."""
        if self._has_subscribers(topic):
            spawn(self.read(topic))

    async def read(self, topic: str) -> Users:
        """Read who is on `topic`, tell this worker's subscribers who joined and who left
        since the last read, and return it. Reads of one topic follow one another."""
        while topic in self.reading:
            self.stale.add(topic)
            await asyncio.shield(self.reading[topic])
            if topic not in self.stale and topic in self.views:
                return self.views[topic]
        self.stale.discard(topic)
        done = self.reading[topic] = asyncio.get_running_loop().create_future()
        try:
            users = await self._members(topic)
            self._tell_changes(topic, self.views.get(topic), users)
            if self._has_subscribers(topic):
                self.views[topic] = users
            return users
        finally:
            del self.reading[topic]
            done.set_result(None)

    def _tell_changes(self, topic: str, before: Users | None, now: Users) -> None:
        if before is None:
            return
        changes = [("join", now[pk]) for pk in now.keys() - before.keys()]
        changes += [("leave", before[pk]) for pk in before.keys() - now.keys()]
        for kind, user in changes:
            frame = Frame(wire.presence_change(kind, topic, user))
            told = 0
            for subscription in self._subscribers(topic):
                if subscription.presence:
                    subscription.tell(frame)
                    told += 1
            child(metrics.MESSAGES, "out", kind).inc(told)

    def _subscribers(self, topic: str) -> list[Subscription]:
        return list(self.subscriptions(topic)) if self.subscriptions else []

    def _has_subscribers(self, topic: str) -> bool:
        return bool(self._subscribers(topic))

    # --- Keeping the entries alive -------------------------------------------------------

    def _start_refreshing(self) -> None:
        if self.refresher is None or self.refresher.done():
            self.refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(ttl() / 3)
            try:
                await self.refresh()
            except (redis.RedisError, OSError) as exc:
                logger.warning("Could not refresh presence in Redis: %s", exc)

    async def refresh(self) -> None:
        """Renew this worker's entries, and read every topic it has subscribers on again
        (which finds the users of a worker that stopped renewing its own)."""
        for topic, counts in list(self.counts.items()):
            await self._store(topic, [self.users[pk] for pk in counts])
        for topic in list(self.views):
            if self._has_subscribers(topic):
                await self.read(topic)
            else:
                self.views.pop(topic, None)

    # --- Where the entries live ----------------------------------------------------------

    def _redis(self) -> Any:
        if self.client is None:
            self.client = async_client()
        return self.client

    async def _store(self, topic: str, users: list[dict[str, Any]]) -> None:
        client = self._redis()
        if client is None or not users:
            return
        expires = time.time() + ttl()
        key = KEY_PREFIX + topic
        async with client.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {member(self.worker, user): expires for user in users})
            pipe.zremrangebyscore(key, "-inf", time.time())
            pipe.expire(key, int(ttl() * 2) + 1)
            await pipe.execute()

    async def _delete(self, topic: str, user: dict[str, Any]) -> None:
        client = self._redis()
        if client is not None:
            await client.zrem(KEY_PREFIX + topic, member(self.worker, user))

    async def _members(self, topic: str) -> Users:
        client = self._redis()
        if client is None:
            return dict(self.local_users(topic))
        return users_of(await client.zrangebyscore(KEY_PREFIX + topic, time.time(), "+inf"))

    async def _announce(self, topic: str) -> None:
        if self._redis() is None:
            if self._has_subscribers(topic):
                await self.read(topic)
            return
        await group_send(TOPICS_GROUP, {"type": CHANGED, "topic": topic})
