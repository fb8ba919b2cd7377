"""Which version of the protocol a socket speaks, from the WebSocket subprotocols its client
offers (docs/protocol.md, "Versions").

A client names its version as a subprotocol, `realtime.v3`. The server serves the current
version and the one before it: a client that offers no subprotocol is the page's script from
before versions were named (version 2) and is served as it was. A client that offers only
versions the server no longer serves is accepted (so that it can read why), told to reload
(`reload`) and closed with 4010: a page's old script is never left resuming in a form the
server does not understand, quietly missing what was sent while it was away.
"""

from __future__ import annotations

from typing import Any

from realtime import wire
from realtime.common.close_codes import PROTOCOL_UNSUPPORTED

PREFIX = "realtime.v"
SERVED = {f"{PREFIX}{wire.PROTOCOL_VERSION}": wire.PROTOCOL_VERSION, f"{PREFIX}2": 2}
UNNAMED = 2  # the version of a client that offers no subprotocol
RELOAD_DETAIL = (
    "This page's script speaks a version of the protocol the server no longer serves "
    "(it offered {offered}; served: {served}). Reload the page."
)


def negotiate(offered: list[str]) -> tuple[int | None, str | None]:
    """The version a socket speaks and the subprotocol to accept it with, from what its
    client offered (in its order of preference); version None when none is served.

    A socket accepted with none of the subprotocols its client offered fails in browsers
    ("Sent non-empty 'Sec-WebSocket-Protocol' header but no response was received"), and
    then its client never reads the close code that says to reload: such a socket is accepted
    with the first it offered, only to be told that."""
    if not offered:
        return UNNAMED, None
    for name in offered:
        if name in SERVED:
            return SERVED[name], name
    return None, offered[0]


def reload_message(offered: list[str]) -> str:
    served = ", ".join(sorted(SERVED, reverse=True)) + " or none"
    detail = RELOAD_DETAIL.format(offered=", ".join(offered)[:200], served=served)
    return wire.reload("protocol", detail)


async def refuse(consumer: Any, offered: list[str]) -> None:
    """Tell an accepted socket of a version the server no longer serves to reload; close it."""
    await consumer.send(text_data=reload_message(offered))
    await consumer.close(code=PROTOCOL_UNSUPPORTED, reason="Reload: protocol version not served")
