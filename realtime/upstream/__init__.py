"""Every place realtime relies on a private attribute, an undocumented behaviour or an
overridden method of Twisted, daphne, autobahn, Channels or pyOpenSSL: here, each with its
reason. Code elsewhere imports these names; it reaches into none of those projects itself.

- websocket_protocol: autobahn's and daphne's WebSocket protocol. daphne's WebSocketProtocol
  with the methods realtime overrides or calls (WEBSOCKET_PROTOCOL_HOOKS: handle_reply, sendMessage,
  sendCloseFrame, check_timeouts); daphne's `last_ping`/`socket_opened` (next_check_due);
  autobahn's send queue (write_frame), negotiated compression (compression_of) and zlib state
  (MessageAtATimeDeflate), its per-connection option copy (with_factory_options) and
  encode_truncate.
- tcp: Twisted's TCP buffer state (send_when_idle, unsent_bytes), `bufferSize`
  (limit_write_buffer) and the PROXY protocol wrapper from its private module
  (ProxyHeaderWrapper, proxy_header_read).
- openssl: the context pointer (set_key_exchange_groups) and CertificateOptions' flags
  (clear_option).
- http_channel: Twisted's HTTPChannel with the methods the request deadline overrides
  (HTTP_CHANNEL_HOOKS) and the attributes it reads, its count of header bytes
  (header_line_size), who owns a connection daphne upgraded (transport_owner), and the
  channel left registered as an upgraded connection's producer (release_from_http_channel).
- daphne_hooks: daphne's Server (imported at first use: it installs the asyncio reactor) with
  the methods RealtimeServer overrides (SERVER_HOOKS) and its
  sweep period; taking over `ready_callable` (call_before_serving) to replace the factories'
  protocols (replace_protocols); the logged client address (set_logged_client); the access
  log's stream; plain `daphne`'s server class (started_by_daphne_cli,
  use_server_class_under_plain_daphne).
- django_side, imported at the first use of one of its names because it imports Django:
  Channels' handler names, the consumer's `__call__`/`dispatch` (CONSUMER_HOOKS), the origin
  validator's `valid_origin`, and daphne's runserver `server_cls`.

tests/test_upstream.py is the contract: it asserts the pinned versions and every name,
signature and behaviour relied on, so that an upgrade fails there, loudly, rather than in a
fan-out or a TLS handshake. Both floors (realtime.server and the app) use this package; it
imports only third-party code, and nothing of Django until a django_side name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from realtime.upstream.daphne_hooks import (
    SERVER_HOOKS,
    TIMEOUT_SWEEP_INTERVAL,
    access_log_stream,
    call_before_serving,
    replace_protocols,
    set_logged_client,
    started_by_daphne_cli,
    use_server_class_under_plain_daphne,
)
from realtime.upstream.http_channel import (
    HTTP_CHANNEL_ATTRIBUTES,
    HTTP_CHANNEL_HOOKS,
    HTTPChannel,
    header_line_size,
    release_from_http_channel,
    transport_owner,
)
from realtime.upstream.openssl import clear_option, set_key_exchange_groups
from realtime.upstream.tcp import (
    TCP_STATE,
    ProxyHeaderFactory,
    ProxyHeaderWrapper,
    limit_write_buffer,
    proxy_header_read,
    send_when_idle,
    unsent_bytes,
)
from realtime.upstream.websocket_protocol import (
    WEBSOCKET_PROTOCOL_HOOKS,
    MessageAtATimeDeflate,
    WebSocketProtocol,
    compression_of,
    encode_truncate,
    hold_no_state_between_messages,
    next_check_due,
    with_factory_options,
    write_frame,
)

# The versions this package was written and measured against (requirements.lock pins them).
PINNED = {
    "autobahn": "26.10.2",
    "channels": "4.3.2",
    "daphne": "4.2.3",
    "pyOpenSSL": "26.4.0",
    "Twisted": "26.10.0",
}

# Names of realtime.upstream.django_side, which imports Django through Channels and daphne's
# runserver: the server floor imports this package and must not pull Django in with it.
DJANGO_SIDE = (
    "handler_name",
    "AsyncWebsocketConsumer",
    "CONSUMER_HOOKS",
    "OriginValidator",
    "ORIGIN_VALIDATOR_HOOKS",
    "DaphneRunserverCommand",
    "RUNSERVER_HOOKS",
)


# Imported at the first use of one of their names: django_side's import Django; daphne's
# Server module installs Twisted's asyncio reactor, which only a process that runs daphne's
# Server (realtime/server/daphne_server.py) may do, never a migrate, a shell or a plugin scan.
LAZY = dict.fromkeys(DJANGO_SIDE, "realtime.upstream.django_side") | {"Server": "daphne.server"}


def __getattr__(name: str) -> Any:
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DJANGO_SIDE",
    "HTTP_CHANNEL_ATTRIBUTES",
    "HTTP_CHANNEL_HOOKS",
    "PINNED",
    "SERVER_HOOKS",
    "TCP_STATE",
    "TIMEOUT_SWEEP_INTERVAL",
    "WEBSOCKET_PROTOCOL_HOOKS",
    "HTTPChannel",
    "MessageAtATimeDeflate",
    "ProxyHeaderFactory",
    "ProxyHeaderWrapper",
    "Server",
    "WebSocketProtocol",
    "access_log_stream",
    "call_before_serving",
    "clear_option",
    "compression_of",
    "encode_truncate",
    "header_line_size",
    "hold_no_state_between_messages",
    "limit_write_buffer",
    "next_check_due",
    "proxy_header_read",
    "release_from_http_channel",
    "replace_protocols",
    "send_when_idle",
    "unsent_bytes",
    "set_key_exchange_groups",
    "set_logged_client",
    "started_by_daphne_cli",
    "transport_owner",
    "use_server_class_under_plain_daphne",
    "with_factory_options",
    "write_frame",
    *DJANGO_SIDE,
]
