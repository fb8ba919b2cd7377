"""Django settings of the Channels tutorial's chat app, reduced to what its WebSocket needs.

Used by bench/peers/tutorial_asgi.py. The channel layer is the tutorial's
`channels_redis.core.RedisChannelLayer` with its default configuration, at TUTORIAL_REDIS_URL.
"""

from __future__ import annotations

import os

SECRET_KEY = "bench-tutorial-only-" + "t" * 40
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
]
# AuthMiddlewareStack needs sessions and auth; an anonymous socket never reaches the database.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TUTORIAL_DB_PATH", ":memory:"),
    }
}
USE_TZ = True
ROOT_URLCONF = "bench.peers.tutorial_asgi"
ASGI_APPLICATION = "bench.peers.tutorial_asgi.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # socket_timeout=None is not the tutorial's, but without it redis-py 8's 5 s default
        # drops every idle socket (channels_redis#422): the pattern would not work at all.
        "CONFIG": {
            "hosts": [{"address": os.environ["TUTORIAL_REDIS_URL"], "socket_timeout": None}]
        },
    }
}
# Its TLS comes from the project's `realtime:` endpoint, whose per-address cap would refuse the
# load generator's sockets (all from 127.0.0.1) past 256 per worker: off, as for the project.
REALTIME_MAX_CONNECTIONS_PER_ADDRESS = 0
