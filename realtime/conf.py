"""Every setting of the realtime app, with its default: `from realtime.conf import conf`.

A project sets only what it wants to change, in its Django settings; `conf.NAME` reads the
project's value when there is one, else the default here, at the moment it is asked (so tests
may override settings). realtime/checks.py turns a wrong value into a system check error that
names the setting (realtime.E001, ...). README.md's settings table says what each one does.

The optional settings of Django and Channels that the app reads (CHANNEL_LAYERS,
ASGI_APPLICATION, BASE_DIR: a project may lack each) are read here too, with their defaults
in OPTIONAL_SETTINGS, so that no command dies of a setting the docs call optional.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from realtime.server.config import SERVER_DEFAULTS, ServerConfig

MIB = 1024 * 1024


def default_cert_dir() -> Path:
    """certs/ beside the project (BASE_DIR, as startproject defines it), else the cwd."""
    return Path(conf.BASE_DIR) / "certs"


def default_require_tls() -> bool:
    """On in production (DEBUG off), off in development."""
    return not settings.DEBUG


def default_fanout_rejoin() -> int:
    """600 s, or half the core layer's group_expiry when that is shorter."""
    expiry = channel_layer_config().get("CONFIG", {}).get("group_expiry", 86400)
    return min(600, max(int(expiry) // 2, 1))


IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"

# Django's and Channels' settings that a project may leave out, and what the app takes then.
OPTIONAL_SETTINGS: dict[str, Any] = {
    # Channels' own in-memory layer: it works within one process only, so a broadcast from
    # another one (`manage.py broadcast`) cannot reach the sockets (realtime.W001 says so).
    "CHANNEL_LAYERS": {"default": {"BACKEND": IN_MEMORY_LAYER}},
    # The management commands that start daphne say to set it when it is missing.
    "ASGI_APPLICATION": "",
    # startproject defines it; without it, the directory the command runs in.
    "BASE_DIR": Path.cwd,
}


# Values, or callables that compute the default from other settings when it is asked for.
# What the server floor uses has its default in its ServerConfig (SERVER_DEFAULTS), read here.
DEFAULTS: dict[str, Any] = {
    "REALTIME_WS_MAX_MESSAGE_SIZE": SERVER_DEFAULTS.ws_max_message_size,
    "REALTIME_WS_RATE": 10,
    "REALTIME_WS_BURST": 20,
    # Every frame, control frames and fragments included (realtime/server/frame_budget.py).
    "REALTIME_WS_FRAME_RATE": SERVER_DEFAULTS.ws_frame_rate,
    "REALTIME_WS_FRAME_BURST": SERVER_DEFAULTS.ws_frame_burst,
    # permessage-deflate for clients that offer it, without context takeover
    # (realtime/server/compression.py).
    "REALTIME_WS_COMPRESSION": SERVER_DEFAULTS.ws_compression,
    # A socket whose client stops reading is dropped past this (realtime/server/unsent.py).
    "REALTIME_WS_MAX_UNSENT_BYTES": SERVER_DEFAULTS.ws_max_unsent_bytes,
    # Request bodies arrive at least this fast on average (realtime/server/request_deadline.py).
    "REALTIME_HTTP_BODY_MIN_RATE": SERVER_DEFAULTS.http_body_min_rate,
    # TCP connections at once per client address (IPv6: per /64) on each worker's TLS and
    # redirect listeners (realtime/server/address_cap.py).
    # Sign-in throttling (realtime/web/signin.py): failures per window, per address and per account.
    # Response headers (realtime/web/headers.py); "" sends none.
    "REALTIME_CONTENT_SECURITY_POLICY": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "REALTIME_PERMISSIONS_POLICY": (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
        "microphone=(), payment=(), usb=(), browsing-topics=()"
    ),
    # The HTTP publish API (realtime/api/publish.py): requests per token, and failed ones per
    # address, per window of seconds; 0: no limit.
    "REALTIME_API_RATE_LIMIT": 120,
    "REALTIME_API_RATE_WINDOW": 60,
    # GET /metrics (realtime/ops/metrics.py): the client addresses or networks it answers, and a
    # bearer token that opens it from anywhere ("" : none does).
    "REALTIME_METRICS_ALLOWED_ADDRESSES": ["127.0.0.1/8", "::1/128"],
    # The proxies and load balancers whose word on the client's address is believed
    # (realtime/server/client_address.py): X-Forwarded-For on plain connections, with
    # DJANGO_TRUST_PROXY_HEADERS; the PROXY protocol's header with serve --proxy-protocol.
    "REALTIME_TRUSTED_PROXIES": list(SERVER_DEFAULTS.trusted_proxies),
    "REALTIME_METRICS_TOKEN": "",
    # The admin's live view (realtime/ops/live_stats.py): seconds between a worker's
    # reports to Redis and its pushes to the staff watching.
    "REALTIME_LIVE_STATS_INTERVAL": 2,
    "REALTIME_SIGNIN_WINDOW": 900,
    "REALTIME_SIGNIN_MAX_PER_ADDRESS": 20,
    "REALTIME_SIGNIN_MAX_PER_ACCOUNT": 10,
    "REALTIME_MAX_CONNECTIONS_PER_ADDRESS": SERVER_DEFAULTS.max_connections_per_address,
    "REALTIME_WS_IDLE_TIMEOUT": 300,
    # Seconds between the server's WebSocket pings to a socket that sends nothing (daphne's
    # default): what keeps proxies and NAT from dropping it, at a small cost per socket.
    "REALTIME_WS_PING_INTERVAL": 20,
    "REALTIME_WS_HANDSHAKE_TIMEOUT": SERVER_DEFAULTS.ws_handshake_timeout,
    "REALTIME_WS_MAX_PER_CLIENT": 100,
    "REALTIME_ALLOWED_ORIGINS": [],
    "REALTIME_REQUIRE_TLS": default_require_tls,
    "REALTIME_TLS_PROFILE": "intermediate",
    "REALTIME_CERT_DIR": default_cert_dir,
    # certbot's --webroot directory, served on the redirect port's /.well-known/acme-challenge/
    "REALTIME_ACME_WEBROOT": None,
    # Topics (docs/topics.md): how far back a subscriber may resume, per topic (messages and
    # seconds), the largest message, subscriptions per socket, and how long a worker that
    # stopped refreshing its presence entries (killed) still counts.
    "REALTIME_TOPIC_HISTORY_SIZE": 100,
    "REALTIME_TOPIC_HISTORY_TTL": 3600,
    "REALTIME_TOPIC_MAX_DATA": 64 * 1024,
    "REALTIME_WS_MAX_SUBSCRIPTIONS": 100,
    # Live HTML (docs/live-html.md): seconds a signed stream name rendered into a page lets a
    # socket subscribe (checked at each subscribe, so at each reconnect too).
    "REALTIME_STREAM_SIGNATURE_MAX_AGE": 24 * 3600,
    # Clients publishing (docs/topics.md): messages per second and at once per publisher (a
    # user, or an anonymous client's address) on each topic, over every worker; how long a
    # stored publish's client id is remembered (a publish sent again with it within this many
    # seconds is answered, not stored again); and the bytes a socket may have waiting to be
    # sent before ephemeral messages to it are dropped.
    "REALTIME_TOPIC_PUBLISH_RATE": 5,
    "REALTIME_TOPIC_PUBLISH_BURST": 10,
    "REALTIME_PUBLISH_ID_TTL": 600,
    "REALTIME_EPHEMERAL_BACKLOG": 16 * 1024,
    # Threads per worker that run topics' `publish` functions (never the database thread the
    # rest of the app shares); each publish may take REALTIME_RPC_TIMEOUT seconds at most.
    "REALTIME_PUBLISH_THREADS": 2,
    # Publishes per second and at once per publisher over all topics (the rate above is per
    # topic; this bounds one spreading over many topic names), over every worker.
    "REALTIME_PUBLISHER_RATE": 10,
    "REALTIME_PUBLISHER_BURST": 20,
    "REALTIME_PRESENCE_TTL": 15,
    # A presence_update's meta: the largest (bytes of compact JSON), and the seconds between
    # two writes of one user's meta on one topic by one worker (the latest value waits).
    "REALTIME_PRESENCE_META_MAX": 1024,
    "REALTIME_PRESENCE_UPDATE_INTERVAL": 1,
    # Calls with a reply (docs/rpc.md, realtime/websocket/calls.py): seconds before a call is
    # answered `timeout`, calls in flight per socket (the next is refused), and the threads
    # that run sync handlers (apart from the database thread the rest of the app shares; one
    # user, or address, may hold half of them at once: realtime/websocket/calls.py).
    "REALTIME_RPC_TIMEOUT": 10,
    "REALTIME_RPC_MAX_IN_FLIGHT": 8,
    "REALTIME_RPC_THREADS": 4,
    # The broadcasts' history for a resume (messages, seconds).
    "REALTIME_RESUME_MAX_COUNT": 500,
    "REALTIME_RESUME_MAX_AGE": 3600,
    # Seconds between sweeps that delete every stream's messages beyond its history (count and
    # age above); one worker over all hosts sweeps each time (realtime/messaging/maintenance).
    "REALTIME_HISTORY_SWEEP_INTERVAL": 60,
    # Replay tokens (a position in the URL, `resume`, `subscribe` with `since`: one each, plus
    # one per 50 rows read) per second and at once per socket, and per client address on each
    # worker (realtime/websocket/replay_budget.py): a replay reads up to 500 rows on the
    # worker's one database thread. 0: no limit.
    "REALTIME_REPLAY_RATE": 1,
    "REALTIME_REPLAY_BURST": 20,
    "REALTIME_REPLAY_ADDRESS_RATE": 20,
    "REALTIME_REPLAY_ADDRESS_BURST": 300,
    "REALTIME_GC_THRESHOLD": SERVER_DEFAULTS.gc_threshold,
    "REALTIME_FANOUT_REJOIN": default_fanout_rejoin,
    "REALTIME_FANOUT_CHECK": 5,
    # A signed-in socket's session is looked at by its end, and at least this often (seconds):
    # an expired or deleted session closes its sockets with 4001.
    "REALTIME_SESSION_CHECK": 300,
    "REALTIME_FANOUT_CHECK_TIMEOUT": 5,
}


_UNKNOWN = object()


class Conf:
    """The realtime settings as attributes: the project's value, else the default."""

    def __getattr__(self, name: str) -> Any:
        default = DEFAULTS.get(name, OPTIONAL_SETTINGS.get(name, _UNKNOWN))
        if default is _UNKNOWN:
            raise AttributeError(f"{name} is not a realtime setting")
        if hasattr(settings, name):
            return getattr(settings, name)
        return default() if callable(default) else default


conf = Conf()


def channel_layer_config() -> dict[str, Any]:
    """The default channel layer's configuration the app uses: the project's, else the
    in-memory layer's (also when CHANNEL_LAYERS names no "default", where Channels has none)."""
    return conf.CHANNEL_LAYERS.get("default", {"BACKEND": IN_MEMORY_LAYER})


def channel_layers_unset() -> bool:
    """True when the project has no CHANNEL_LAYERS: the app then uses the in-memory layer."""
    return not hasattr(settings, "CHANNEL_LAYERS")


def server_config() -> ServerConfig:
    """What the server floor is told (realtime/server/config.py), from the settings now;
    `RealtimeConfig.ready()` hands the floor this function."""
    return ServerConfig(
        max_connections_per_address=int(conf.REALTIME_MAX_CONNECTIONS_PER_ADDRESS),
        trusted_proxies=tuple(conf.REALTIME_TRUSTED_PROXIES),
        forwarded_headers=bool(getattr(settings, "SECURE_PROXY_SSL_HEADER", None)),
        ws_max_message_size=conf.REALTIME_WS_MAX_MESSAGE_SIZE,
        ws_handshake_timeout=conf.REALTIME_WS_HANDSHAKE_TIMEOUT,
        ws_compression=conf.REALTIME_WS_COMPRESSION,
        ws_frame_rate=conf.REALTIME_WS_FRAME_RATE,
        ws_frame_burst=conf.REALTIME_WS_FRAME_BURST,
        ws_max_unsent_bytes=conf.REALTIME_WS_MAX_UNSENT_BYTES,
        http_body_min_rate=conf.REALTIME_HTTP_BODY_MIN_RATE,
        gc_threshold=conf.REALTIME_GC_THRESHOLD,
        allowed_hosts=tuple(settings.ALLOWED_HOSTS),
        channel_layer=describe_channel_layer(),
    )


def describe_channel_layer() -> str:
    """One line on the channel layer in use, without the Redis URL (it may hold a password)."""
    backend = channel_layer_config()["BACKEND"]
    if channel_layers_unset():
        return (
            "CHANNEL_LAYERS is not set: using the in-memory channel layer, so broadcasts reach "
            "only the clients of this process. Set CHANNEL_LAYERS to a Redis layer to share "
            "them between processes."
        )
    if backend == IN_MEMORY_LAYER:
        return (
            "REDIS_URL is not set: using the in-memory channel layer, so broadcasts reach "
            "only the clients of this process. Set REDIS_URL to share them between processes."
        )
    return f"Channel layer: {backend}."
