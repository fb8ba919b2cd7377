"""The WebSocket stack behind /ws/: origin and TLS checks, limits, sessions, the consumer and
the JSON protocol it speaks."""
