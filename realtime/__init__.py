"""realtime: HTTPS pages, WSS consumers and broadcasts over one TLS endpoint."""
