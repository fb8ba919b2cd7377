"""Calls for tests/test_client.py: echo, a refusal, a slow one."""

from __future__ import annotations

import time
from typing import Any

from realtime import rpc


@rpc.register("test.echo")
def echo(user: Any, data: Any) -> Any:
    return {"echo": data, "user": user.username if user.is_authenticated else None}


@rpc.register("test.refuse")
def refuse(user: Any, data: Any) -> Any:
    raise rpc.Rejected("Not today.")


@rpc.register("test.slow")
def slow(user: Any, data: Any) -> Any:
    time.sleep(float(data))
    return "late"
