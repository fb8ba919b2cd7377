"""The server floor: daphne and Twisted, patched and extended for serving realtime.

RealtimeServer (daphne_server), its TLS, plain and redirect endpoints and the `serve`
supervisor. Nothing here imports Django or the app (tests/test_floors.py): the app hands the
server its configuration (realtime.server.config), what it needs per socket through the ASGI
scope (realtime.server.frames) and the periodic work it registers (realtime.server.hooks).
"""
