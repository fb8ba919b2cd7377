"""/healthz: 200 when the database, the channel layer and this worker's fan-out work, 503 with
the reason when not.

For load balancers and service managers. The channel layer check is a real round trip (send a
message to a new channel and receive it), so a Redis that accepts connections but does not
deliver still fails it. The fan-out check is the answering worker's own: whether its last
check through the layer came back (realtime.broadcasting.fanout).
"""

from __future__ import annotations

import asyncio
import uuid

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

from realtime.broadcasting.fanout import failure_reason, fanout

CHECK_TIMEOUT = 3.0


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def check_channel_layer() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel("healthz.")
    token = uuid.uuid4().hex
    await layer.send(channel, {"type": "healthz", "token": token})
    message = await layer.receive(channel)
    if message.get("token") != token:
        raise RuntimeError("the channel layer returned another message")


async def run_check(check) -> str | None:
    """None when the check passes, else a one-line reason (no secrets: no URLs)."""
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except TimeoutError:
        return f"timed out after {CHECK_TIMEOUT:.0f} s"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return failure_reason(exc)
    return None


@never_cache
async def healthz(request: HttpRequest) -> JsonResponse:
    results = {
        "database": await run_check(sync_to_async(check_database)),
        "channel_layer": await run_check(check_channel_layer),
        "fanout": fanout.problem(),
    }
    healthy = all(reason is None for reason in results.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        "checks": {name: reason or "ok" for name, reason in results.items()},
    }
    return JsonResponse(body, status=200 if healthy else 503)
