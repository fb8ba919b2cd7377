"""Every frame a client sends costs it a token: control frames and empty fragments included.

The message rate limit (realtime/websocket/limits.py) sees application messages only, yet
pings, pongs and empty continuation frames each cost the worker a parse (and a ping a pong).
Here each ping, pong and fragment after a message's first frame (autobahn's
`onMessageFrameBegin`; the first is the message rate's to count) takes a token from a bucket of
REALTIME_WS_FRAME_RATE a second up to REALTIME_WS_FRAME_BURST; the first frame without one
closes the socket with 1008 ("Too many frames") and gets no pong. Only autobahn's documented
callbacks (IWebSocketChannel) are overridden. What a flood cost, and why the defaults leave
room for honest clients: docs/security.md ("Limits").
"""

from __future__ import annotations

import logging

from realtime.common.close_codes import POLICY_VIOLATION
from realtime.common.rates import TokenBucket
from realtime.server.config import SERVER_DEFAULTS

TOO_MANY_FRAMES = b"Too many frames"

logger = logging.getLogger(__name__)


class FrameBudget:
    """A mixin for daphne's WebSocketProtocol; RealtimeServer sets the rate and burst."""

    frame_rate: float = float(SERVER_DEFAULTS.ws_frame_rate)  # 0: no frame budget
    frame_burst: int = SERVER_DEFAULTS.ws_frame_burst
    _frames: TokenBucket | None = None
    _frames_in_message = 0

    def _spend_frame(self) -> bool:
        if self.frame_rate <= 0:
            return True
        if self._frames is None:
            self._frames = TokenBucket(self.frame_rate, max(self.frame_burst, 1))
        if self._frames.take():
            return True
        if self._frames.dropped == 1 and self.state == self.STATE_OPEN:
            logger.warning(
                "Closed a WebSocket from %s sending too many frames (%d).",
                self.peer,
                POLICY_VIOLATION,
            )
            self.sendCloseFrame(code=POLICY_VIOLATION, reasonUtf8=TOO_MANY_FRAMES)
        return False

    def onMessageBegin(self, isBinary: bool) -> None:
        self._frames_in_message = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        # A message's first frame is the message rate's to count (limits.py); each further
        # fragment is one more frame to parse for the same message.
        self._frames_in_message += 1
        if self._frames_in_message > 1:
            self._spend_frame()  # past the budget the socket is closing: its data goes nowhere
        super().onMessageFrameBegin(length)

    def onPing(self, payload: bytes) -> None:
        if self._spend_frame():
            super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self._spend_frame()
        super().onPong(payload)
