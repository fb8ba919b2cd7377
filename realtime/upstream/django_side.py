"""Channels' consumer and origin validator, and daphne's runserver: the hooks realtime's app
overrides. Every one of these modules imports Django, so this part of realtime.upstream is
imported only when one of its names is first used (never by the server floor).

tests/test_upstream.py asserts each name, signature and behaviour listed here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer as ChannelsWebsocketConsumer
from channels.security.websocket import OriginValidator as ChannelsOriginValidator
from daphne.management.commands.runserver import Command as DaphneRunserver

# The consumer's dispatch without the thread hop Channels adds (realtime/websocket/consumer.py)
# must name handlers exactly as Channels does: "websocket.receive" -> websocket_receive.
handler_name: Callable[[dict[str, Any]], str] = get_handler_name

# Channels' WebSocket consumer, the base of RealtimeConsumer.
AsyncWebsocketConsumer = ChannelsWebsocketConsumer

# What RealtimeConsumer replaces: Channels' AsyncConsumer.__call__ subscribes every socket to
# a channel of its own and waits on it and the client together; its dispatch and
# websocket_disconnect hop to a thread for close_old_connections. The consumer's own __call__
# sets `base_send`, as Channels' does, because Channels' send() writes through it.
CONSUMER_HOOKS = {
    "__call__": "(self, scope, receive, send): the ASGI application of one socket",
    "dispatch": "(self, message): runs the handler named by handler_name(message)",
    "websocket_disconnect": "(self, message): ends with StopConsumer",
}

# Channels' origin check, the base of LoggingOriginValidator. Channels documents the class
# and its constructor (application, allowed_origins); `valid_origin` is a method of it that
# its docs do not name, overridden to log and count each refusal.
OriginValidator = ChannelsOriginValidator
ORIGIN_VALIDATOR_HOOKS = {
    "valid_origin": "(self, parsed_origin): the urlparse()d Origin, or None; False: 403",
}

# daphne's runserver, the base of realtime's: its inner_run builds `server_cls(**kwargs)`, so
# a class or any callable taking the same keywords (runserver --tls swaps in a builder). The
# attribute is not documented.
DaphneRunserverCommand = DaphneRunserver
RUNSERVER_HOOKS = {
    "server_cls": "called with keyword arguments only (application, endpoints, ...)",
}
