"""Procedures for tests/test_rpc_e2e.py, registered as any app's are: realtime imports every
installed app's rpc.py at start-up. Some are hostile on purpose (they hang, raise, return
what cannot be sent); a server installs this app only through tests/rpc_settings.py."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from django.contrib.auth import get_user_model

from realtime import rpc

# Gates the hanging handlers wait on, by name, until test.release opens one (in this worker).
GATES: dict[str, threading.Event] = {}
CANCELLED = {"async": 0}


def gate(data: Any) -> threading.Event:
    return GATES.setdefault(str((data or {}).get("gate", "")), threading.Event())


@rpc.register("test.echo")
def echo(user: Any, data: Any) -> dict[str, Any]:
    """Sync, with the database: what was sent, who sent it, as the database has them."""
    stored = get_user_model().objects.get(pk=user.pk)
    return {"data": data, "user": stored.get_username()}


@rpc.register("test.echo_async")
async def echo_async(user: Any, data: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"data": data, "user": user.get_username()}


@rpc.register("test.public", authorize=rpc.anyone)
def public(user: Any, data: Any) -> dict[str, Any]:
    return {"signed_in": bool(user.is_authenticated)}


@rpc.register("test.reject")
def reject(user: Any, data: Any) -> None:
    raise rpc.Rejected("Out of stock")


@rpc.register("test.raise")
def fail(user: Any, data: Any) -> None:
    raise RuntimeError("rpc-secret-4242: a bug's words that must stay on the server")


@rpc.register("test.too_big")
def too_big(user: Any, data: Any) -> str:
    return "x" * 100_000


@rpc.register("test.not_json")
def not_json(user: Any, data: Any) -> Any:
    return {"when": object()}


@rpc.register("test.hang", authorize=rpc.anyone)
def hang(user: Any, data: Any) -> str:
    """Sync, and does not return until its gate opens (a handler stuck on a dead service)."""
    gate(data).wait()
    return "released"


@rpc.register("test.hang_async", authorize=rpc.anyone)
async def hang_async(user: Any, data: Any) -> str:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        CANCELLED["async"] += 1
        raise
    return "never"


@rpc.register("test.release", authorize=rpc.anyone)
async def release(user: Any, data: Any) -> dict[str, Any]:
    """Open a gate in this worker; and say how many async hangs were cancelled."""
    gate(data).set()
    return {"async_cancelled": CANCELLED["async"]}


@rpc.register("test.perm", authorize=lambda user: user.has_perm("auth.view_user"))
def with_permission(user: Any, data: Any) -> str:
    return "allowed"
