"""The floor under any Channels consumer: a bare ASGI app that echoes every WebSocket message.

    daphne -e realtime:PORT:privateKey=KEY:certKey=CERT bench.peers.bare_echo:application

No Django, no Channels, no middleware: accept every socket, send back what arrives. Whatever
the project's consumer costs beyond this is the price of Channels and the project's own code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await echo(receive, send)
    elif scope["type"] == "http":
        await not_found(receive, send)


async def echo(receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive":
            # Text stays text and bytes stay bytes, as the ASGI spec has it.
            await send(
                {"type": "websocket.send", "text": event.get("text"), "bytes": event.get("bytes")}
            )
        elif event["type"] == "websocket.disconnect":
            return


async def not_found(receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})
