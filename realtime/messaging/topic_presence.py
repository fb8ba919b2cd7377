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

Metadata (`presence_update` from a client, docs/topics.md): a worker keeps the latest meta any
of a user's sockets here set on a topic, stamped with when it arrived, and writes it to a hash
beside the set (`realtime:presence:meta:<name>`, field: the worker's member) at most once per
REALTIME_PRESENCE_UPDATE_INTERVAL per user and topic, the latest value winning; each write is
a change event like a join. A reader gives each user the meta with the latest stamp of its
live entries ({} when none set one), and tells `update` when a user's meta changed. The
members keep their format (`[worker, pk, username]`): workers of the previous version read
them as before and ignore the hash, and the refresh renews the hash's expiry, never its
values, so a meta costs Redis its bytes once per write, not per refresh. A member's field goes
with it: removed with it, and dropped when it expires (a killed worker's).
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
META_PREFIX = "realtime:presence:meta:"  # a hash: member -> JSON [stamp, meta]
CHANGED = "realtime.presence"  # the channel layer event: a presence topic changed
Users = dict[str, dict[str, Any]]  # str(pk) -> {"id": pk, "username": ..., "meta": {...}}
Stamped = tuple[float, dict[str, Any]]  # (when a worker received it, the meta)

# Drop the expired members of a topic's set and their metas, at once: a worker that was stalled
# past the TTL and stores its member again finds its meta gone, and writes it again (refresh()).
FORGET_EXPIRED = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 1, #gone, 1000 do
  redis.call('HDEL', KEYS[2], unpack(gone, i, math.min(i + 999, #gone)))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return #gone
"""


def ttl() -> float:
    return float(conf.REALTIME_PRESENCE_TTL)


def member(worker: str, user: dict[str, Any]) -> str:
    return json.dumps([worker, user["id"], user["username"]])


def users_of(members: list[Any], metas: dict[Any, Any] | None = None) -> Users:
    """Each user of the live `members` once, with the latest meta among its members' `metas`
    (the hash's fields and values, as Redis returns them)."""
    users: Users = {}
    stamps: dict[str, float] = {}
    for raw in members:
        entry = json.loads(raw)
        pk, username = entry[1], entry[2]  # [worker, pk, username]; a later version may add
        key = str(pk)
        user = users.setdefault(key, {"id": pk, "username": username, "meta": {}})
        stamped = stamped_meta((metas or {}).get(raw))
        if stamped is not None and stamped[0] > stamps.get(key, float("-inf")):
            stamps[key] = stamped[0]
            user["meta"] = stamped[1]
    return users


def stamped_meta(raw: Any) -> Stamped | None:
    """A hash value read back, or None when there is none or it is not one."""
    if raw is None:
        return None
    try:
        stamp, meta = json.loads(raw)
    except (ValueError, TypeError):
        return None
    ok = isinstance(stamp, int | float) and isinstance(meta, dict)
    return (float(stamp), meta) if ok else None


def stamped_text(stamped: Stamped) -> str:
    return json.dumps(list(stamped), separators=(",", ":"), ensure_ascii=False)


def without_meta(user: dict[str, Any]) -> dict[str, Any]:
    return {"id": user["id"], "username": user["username"]}


class Presence:
    """This worker's side of presence topics."""

    def __init__(self) -> None:
        self.worker = uuid.uuid4().hex  # a restarted worker's entries are new ones
        self.counts: dict[str, Counter[str]] = {}  # topic -> str(pk) -> sockets here
        self.users: dict[str, dict[str, Any]] = {}  # str(pk) -> {"id", "username"}
        self.meta: dict[str, dict[str, Stamped]] = {}  # topic -> str(pk) -> its latest here
        self.written: dict[tuple[str, str], float] = {}  # (topic, pk) -> monotonic, last write
        self.due: set[tuple[str, str]] = set()  # (topic, pk) whose write waits for its turn
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
            self._forget_meta(topic, pk)
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
        metas = self.meta.get(topic, {})
        return {
            pk: {**self.users[pk], "meta": metas[pk][1] if pk in metas else {}}
            for pk in self.counts.get(topic, {})
        }

    # --- Metadata --------------------------------------------------------------------------

    def update(self, subscription: Subscription, meta: dict[str, Any]) -> None:
        """A counted subscriber's user set its meta on the topic (checked already). Kept now;
        written, and told, at once or when the user's last write here is an interval old."""
        topic, pk = subscription.name, subscription.member
        if pk is None or pk not in self.counts.get(topic, {}):
            return
        metas = self.meta.setdefault(topic, {})
        before = metas.get(pk)
        # Later than any this worker stamped for the user, even if the clock stepped back.
        stamp = max(time.time(), before[0] + 1e-6) if before else time.time()
        metas[pk] = (stamp, meta)
        key = (topic, pk)
        if key in self.due:  # its write is waiting: it will take this value
            return
        self.due.add(key)
        interval = float(conf.REALTIME_PRESENCE_UPDATE_INTERVAL)
        wait = self.written.get(key, float("-inf")) + interval - time.monotonic()
        spawn(self._write_meta(topic, pk, max(wait, 0.0)))

    async def _write_meta(self, topic: str, pk: str, wait: float) -> None:
        if wait > 0:
            await asyncio.sleep(wait)
        self.due.discard((topic, pk))
        stamped = self.meta.get(topic, {}).get(pk)
        if stamped is None:  # the user left this worker's topic meanwhile
            return
        self.written[(topic, pk)] = time.monotonic()
        try:
            await self._store_meta(topic, {pk: stamped})
            if pk not in self.meta.get(topic, {}):  # left as it was written: not kept
                await self._delete_meta(topic, pk)
            await self._announce(topic)
        except (redis.RedisError, OSError) as exc:  # the next update tries again
            logger.warning("Could not store a presence meta of %s: %s", topic, exc)

    def _forget_meta(self, topic: str, pk: str) -> None:
        metas = self.meta.get(topic)
        if metas is not None:
            metas.pop(pk, None)
            if not metas:
                del self.meta[topic]
        self.written.pop((topic, pk), None)

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
        changes += [("leave", without_meta(before[pk])) for pk in before.keys() - now.keys()]
        changes += [
            ("update", now[pk])
            for pk in now.keys() & before.keys()
            if now[pk].get("meta") != before[pk].get("meta")
        ]
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
            expired_ours = await self._store(topic, [self.users[pk] for pk in counts])
            if expired_ours and self.meta.get(topic):  # stalled past the TTL: write them again
                await self._store_meta(topic, dict(self.meta[topic]))
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

    async def _store(self, topic: str, users: list[dict[str, Any]]) -> int:
        """Add or renew this worker's members of `users`; returns how many were not there."""
        client = self._redis()
        if client is None or not users:
            return 0
        now = time.time()
        key, metas, keep = KEY_PREFIX + topic, META_PREFIX + topic, int(ttl() * 2) + 1
        async with client.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {member(self.worker, user): now + ttl() for user in users})
            pipe.eval(FORGET_EXPIRED, 2, key, metas, now)
            pipe.expire(key, keep)
            pipe.expire(metas, keep)
            added, *_ = await pipe.execute()
        return int(added)

    async def _store_meta(self, topic: str, stamped: dict[str, Stamped]) -> None:
        """Write this worker's metas of some users (str(pk) -> stamped meta) on `topic`."""
        client = self._redis()
        if client is None:
            return
        fields = {
            member(self.worker, self.users[pk]): stamped_text(value)
            for pk, value in stamped.items()
        }
        metas = META_PREFIX + topic
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(metas, mapping=fields)
            pipe.expire(metas, int(ttl() * 2) + 1)
            await pipe.execute()

    async def _delete_meta(self, topic: str, pk: str) -> None:
        client = self._redis()
        if client is not None:
            await client.hdel(META_PREFIX + topic, member(self.worker, self.users[pk]))

    async def _delete(self, topic: str, user: dict[str, Any]) -> None:
        client = self._redis()
        if client is not None:
            entry = member(self.worker, user)
            async with client.pipeline(transaction=True) as pipe:
                pipe.zrem(KEY_PREFIX + topic, entry)
                pipe.hdel(META_PREFIX + topic, entry)
                await pipe.execute()

    async def _members(self, topic: str) -> Users:
        client = self._redis()
        if client is None:
            return dict(self.local_users(topic))
        async with client.pipeline(transaction=True) as pipe:
            pipe.zrangebyscore(KEY_PREFIX + topic, time.time(), "+inf")
            pipe.hgetall(META_PREFIX + topic)
            members, metas = await pipe.execute()
        return users_of(members, metas)

    async def _announce(self, topic: str) -> None:
        if self._redis() is None:
            if self._has_subscribers(topic):
                await self.read(topic)
            return
        await group_send(TOPICS_GROUP, {"type": CHANGED, "topic": topic})
