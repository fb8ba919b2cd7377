"""/healthz: 200 when the database, the channel layer and this worker's fan-out work, 503 when
not, each check "ok" or "down".

The reason (an exception's text, which can name internal hosts and ports) goes to the log, at
most once a minute per check, and in the answer only to whoever may read /metrics
(REALTIME_METRICS_ALLOWED_ADDRESSES, or its bearer token): /healthz needs no login.

For load balancers and service managers. The channel layer check is a real round trip (send a
message to a new channel and receive it), so a Redis that accepts connections but does not
deliver still fails it. The fan-out check is the answering worker's own: whether its last
check through the layer came back (realtime.messaging.fanout).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import redis
from channels.db import database_sync_to_async
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

from realtime.common.rates import LOG_EVERY, OncePerInterval
from realtime.messaging.fanout import fanout
from realtime.messaging.layer import channel_layer, retrying
from realtime.messaging.layer_link import failure_reason
from realtime.messaging.redis_client import redis_hosts, sync_client_for
from realtime.ops.metrics import from_allowed_address, has_token

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0
DOWN = "down"
# A balancer probes every few seconds: one line per failing check a minute says it all.
should_log = OncePerInterval(LOG_EVERY)


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def services_down() -> list[str]:
    """What a server needs and cannot reach now (the database, the channel layer's Redis),
    each with the reason, for `serve` to check before it starts its workers."""
    problems = []
    try:
        check_database()
    except Exception as exc:  # any driver's error: the message names it
        problems.append(f"the database ({failure_reason(exc)})")
    finally:
        connection.close()
    hosts = redis_hosts()
    for number, host in enumerate(hosts, 1):
        name = f"Redis shard {number} of {len(hosts)}" if len(hosts) > 1 else "Redis"
        client = sync_client_for(host)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            problems.append(f"{name} ({failure_reason(exc)})")
        finally:
            client.close()
    return problems


class ChannelCheck:
    """One channel per event loop, reused by every check, one check at a time.

    A new channel per request would stay subscribed on the pub/sub layer for the life of the
    process (only a cancelled receive removes one): thousands a day under a load balancer.
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.channel: str | None = None

    async def run(self) -> None:
        async with self.lock:
            layer = channel_layer()
            if self.channel is None:
                self.channel = await layer.new_channel("healthz.")
            token = uuid.uuid4().hex
            await layer.send(self.channel, {"type": "healthz", "token": token})
            try:
                message = await layer.receive(self.channel)
            except BaseException:
                self.channel = None  # a cancelled receive deletes it on the pub/sub layer
                raise
            if message.get("token") != token:
                raise RuntimeError("the channel layer returned another message")


_checks: dict[asyncio.AbstractEventLoop, ChannelCheck] = {}


async def check_channel_layer() -> None:
    loop = asyncio.get_running_loop()
    check = _checks.get(loop)
    if check is None:
        _checks.clear()  # another loop's (tests run several): its layer went with it
        check = _checks[loop] = ChannelCheck()
    # A Redis that restarted leaves dead pooled connections that fail once each.
    await retrying(check.run)


async def run_check(check) -> str | None:
    """None when the check passes, else a one-line reason (no secrets: no URLs)."""
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except TimeoutError:
        return f"timed out after {CHECK_TIMEOUT:.0f} s"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return failure_reason(exc)
    return None


def log_failures(results: dict[str, str | None]) -> None:
    for name, reason in results.items():
        if reason is not None and should_log(name):
            logger.warning("/healthz: %s is down: %s (said once a minute)", name, reason)


def shows_reasons(request: HttpRequest) -> bool:
    """Whether this caller may read why a check failed: those who may read /metrics."""
    return from_allowed_address(request) or has_token(request)


@never_cache
async def healthz(request: HttpRequest) -> JsonResponse:
    results = {
        "database": await run_check(database_sync_to_async(check_database)),
        "channel_layer": await run_check(check_channel_layer),
        "fanout": fanout.problem(),
    }
    log_failures(results)
    healthy = all(reason is None for reason in results.values())
    detailed = shows_reasons(request)
    checks = {
        name: "ok" if reason is None else reason if detailed else DOWN
        for name, reason in results.items()
    }
    body = {"status": "ok" if healthy else "unavailable", "checks": checks}
    return JsonResponse(body, status=200 if healthy else 503)
