"""What both floors need, below both: the app (realtime/) and the server floor (realtime/server/,
realtime/tls/) import from here, and this package imports nothing of realtime outside itself,
nor Django (tests/test_floors.py).

`close_codes`: every WebSocket close code the project sends, named once. `rates`: a token bucket
and a once-per-interval log limiter. `addresses`: a client address and the key every
per-address counter uses. `endpoint_strings`: Twisted endpoint descriptions, escaped.
"""
