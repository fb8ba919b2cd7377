"""The server floor: daphne and Twisted, patched and extended for serving realtime.

RealtimeServer (daphne_server), its TLS and redirect endpoints and the `serve` supervisor.
Nothing here imports the app's models, consumers or broadcasting (a test blocks them): the
app hands the server what it needs through the ASGI scope (realtime.server.frames) and the
periodic work it registers (realtime.server.hooks).
"""
