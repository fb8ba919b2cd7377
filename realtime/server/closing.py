"""daphne's WebSocketProtocol, closing with the code and reason the application chose.

daphne 4.2 turns an ASGI `websocket.close` into autobahn's public `sendClose(code)`, which
refuses every code but 1000 and 3000-4999 (so 1008, 1011 or 1013 from the application crash
the connection handler, and the client sees 1011) and drops the `reason`. This protocol sends
the close frame itself for any code a server may send (RFC 6455 section 7.4), with the reason
truncated to the 123 bytes a close frame holds. RealtimeServer installs it on its factory.
It overrides daphne's undocumented `handle_reply` and calls autobahn's internal
`sendCloseFrame` (realtime.upstream's WEBSOCKET_PROTOCOL_HOOKS).
"""

from __future__ import annotations

from typing import Any

from realtime.common.close_codes import NORMAL_CLOSURE
from realtime.upstream import WebSocketProtocol, encode_truncate

MAX_REASON_BYTES = 123


def sendable(code: Any) -> bool:
    """A close code a server may put on the wire: not 1004-1006 or 1015, which are reserved."""
    if isinstance(code, bool) or not isinstance(code, int):
        return False
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


class AppCloseWebSocketProtocol(WebSocketProtocol):
    def handle_reply(self, message: dict[str, Any]) -> None:
        code = message.get("code") or NORMAL_CLOSURE
        if (
            message.get("type") == "websocket.close"
            and self.state != self.STATE_CONNECTING  # before accept: daphne answers 403
            and sendable(code)
        ):
            reason = encode_truncate(message.get("reason") or "", MAX_REASON_BYTES)
            self.sendCloseFrame(code=code, reasonUtf8=reason or None)
            return
        super().handle_reply(message)
