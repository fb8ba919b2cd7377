"""The WebSocket stack behind /ws/: origin and TLS checks, limits, sessions and the consumer,
which speaks the wire format of realtime.wire."""
