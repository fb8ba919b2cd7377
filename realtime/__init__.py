"""realtime: HTTPS pages, WSS sockets and broadcasts over one TLS endpoint. The public entry
points: realtime.routing.websocket_application(), realtime.broadcast, realtime.topics,
realtime.notifications and realtime.rpc (the README maps the rest)."""
