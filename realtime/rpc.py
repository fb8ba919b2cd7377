"""Calls with a reply, from a client to the app: the public API (docs/rpc.md).

    from realtime import rpc

    @rpc.register("cart.add")  # in an installed app's rpc.py
    def add_to_cart(user, data):  # runs in a thread: may use the database
        if not isinstance(data, dict) or "sku" not in data:
            raise rpc.Rejected("Say which article to add.")
        return {"items": Cart.objects.add(user, data["sku"])}

A client sends `{"type": "call", "name": "cart.add", "data": {...}, "ref": 1}` and gets
`{"type": "reply", "ref": 1, "data": {"items": 3}}` or a reply with an `error`. Every installed
app's `rpc.py` is imported when Django starts, as `topics.py` is. How calls run, their deadline
and their limits: realtime/websocket/calls.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import iscoroutinefunction

__all__ = ["Rejected", "anyone", "register", "signed_in"]

# What a client may name: letters, digits and . _ : - (as topics), at most 100 of them.
NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")
MAX_REASON = 1000  # characters of a Rejected reason sent to the client


class Rejected(Exception):  # noqa: N818 - the name apps write: raise rpc.Rejected("why")
    """Raised by a handler to refuse a call: the client gets error `rejected` with `reason`."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = str(reason)[:MAX_REASON]


def signed_in(user: Any) -> bool:
    """The default `authorize`: signed-in users (the socket's user as stored now: a user
    deactivated or deleted since it connected is anonymous)."""
    return bool(user.is_authenticated and user.is_active)


def anyone(user: Any) -> bool:
    """`authorize=rpc.anyone`: anonymous sockets may call too."""
    return True


@dataclass(frozen=True)
class Procedure:
    name: str
    function: Callable[[Any, Any], Any]
    authorize: Callable[[Any], bool]
    is_async: bool


procedures: dict[str, Procedure] = {}


def register(name: str, *, authorize: Callable[[Any], bool] | None = None) -> Any:
    """Register `function(user, data)` under `name`, as a decorator: `@rpc.register("cart.add")`.

    `authorize(user) -> bool` decides who may call it (default: signed-in active users; pass
    `authorize=rpc.anyone` to let anonymous sockets call). It runs at each call with the user
    as the database has it then. The function may be sync (run in one of the calls' threads,
    REALTIME_RPC_THREADS) or async (run on the event loop: it must not block). Registering a
    name again replaces the earlier one.
    """
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} cannot be a procedure name: 1 to 100 letters, digits and . _ : -"
        )
    if authorize is None:
        authorize = signed_in
    if not callable(authorize) or iscoroutinefunction(authorize):
        raise TypeError("authorize must be a plain function (user) -> bool")

    def decorate(function: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        if not callable(function):
            raise TypeError("a procedure must be a function (user, data), sync or async")
        is_async = iscoroutinefunction(function)
        procedures[name] = Procedure(name, function, authorize, is_async)
        return function

    return decorate


def lookup(name: str) -> Procedure | None:
    return procedures.get(name)
