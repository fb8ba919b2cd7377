"""Every WebSocket close code this project sends, each named once (docs/protocol.md).

The server floor sends some itself (a stopping worker, a frame flood), the app the others;
both import them from here, as Starlette's `status` module holds its codes.
"""

from __future__ import annotations

NORMAL_CLOSURE = 1000  # what a close without a code means (ASGI's default)
GOING_AWAY = 1001  # the worker is stopping (SIGTERM, a rolling restart)
POLICY_VIOLATION = 1008  # TLS required, an unknown path, or the client kept flooding
TRY_AGAIN_LATER = 1013  # too many sockets from one address, or the channel layer is down
IDLE_TIMEOUT = 4000  # application range: the client may reconnect at once (not "going away")
SIGNED_OUT = 4001  # the session signed out: reconnect, now anonymous
PROTOCOL_UNSUPPORTED = 4010  # the client's protocol version is no longer served: reload the page
