"""Django settings, read from environment variables (documented in README.md).

Development works with no variable set: SQLite, the in-memory channel layer and DEBUG off
unless DJANGO_DEBUG=1. With DEBUG off the settings are production-grade and
`manage.py check --deploy --fail-level WARNING` passes.
"""

from __future__ import annotations

import os
from pathlib import Path

from project.env import (
    SettingsError,
    database_from_url,
    envbool,
    envhostports,
    envint,
    envlist,
)
from realtime.ops.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = envbool("DJANGO_DEBUG")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise SettingsError(
            "DJANGO_SECRET_KEY is not set. It is required when DJANGO_DEBUG is not 1; "
            'generate one with: python -c "import secrets; print(secrets.token_urlsafe(50))"'
        )
    SECRET_KEY = "django-insecure-development-only-key-never-used-with-debug-off"

ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])


def origin_for_host(host: str) -> str:
    """The https origin CSRF should trust for an ALLOWED_HOSTS entry (".x" means subdomains)."""
    return f"https://*{host}" if host.startswith(".") else f"https://{host}"


CSRF_TRUSTED_ORIGINS = envlist(
    "DJANGO_CSRF_TRUSTED_ORIGINS", [origin_for_host(h) for h in ALLOWED_HOSTS if h != "*"]
)

INSTALLED_APPS = [
    # realtime first: its runserver (with --tls) overrides daphne's, which overrides Django's.
    "realtime",
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "project.demo",  # the example's topics (project/demo/topics.py)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "realtime.web.signin.ThrottleMiddleware",
    "realtime.web.headers.SecurityHeadersMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
# Sign-in throttling (realtime/web/signin.py) refuses before any password is checked.
AUTHENTICATION_BACKENDS = [
    "realtime.web.signin.ThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Password reset needs mail: its pages exist only once DJANGO_EMAIL_HOST is set.
EMAIL_HOST = os.environ.get("DJANGO_EMAIL_HOST", "")
EMAIL_PORT = envint("DJANGO_EMAIL_PORT", 587)
EMAIL_HOST_USER = os.environ.get("DJANGO_EMAIL_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("DJANGO_EMAIL_PASSWORD", "")
EMAIL_USE_TLS = EMAIL_PORT != 465
EMAIL_USE_SSL = EMAIL_PORT == 465
DEFAULT_FROM_EMAIL = os.environ.get("DJANGO_EMAIL_FROM", "webmaster@localhost")
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# DATABASE_URL (postgres://user:password@host:port/name?sslmode=...) selects PostgreSQL, which
# several processes and hosts can share; unset, one SQLite file (one machine only).
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {
        "default": database_from_url(
            DATABASE_URL,
            pool=envbool("DATABASE_POOL", True),
            max_age=envint("DATABASE_CONN_MAX_AGE", 600),
        )
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed, compressed files served by WhiteNoise from the same daphne process.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Channels -------------------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_SENTINELS = envhostports("REDIS_SENTINELS")
# "pubsub": one PUBLISH per group, each worker fans out to its own sockets (docs/deployment.md
# has the measurements behind this default). "core": one stored message per socket.
REDIS_CHANNEL_LAYERS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}
REDIS_CHANNEL_LAYER = os.environ.get("REDIS_CHANNEL_LAYER", "pubsub")
if REDIS_CHANNEL_LAYER not in REDIS_CHANNEL_LAYERS:
    raise SettingsError(f"REDIS_CHANNEL_LAYER must be pubsub or core, not {REDIS_CHANNEL_LAYER!r}.")


def redis_hosts() -> list[dict[str, object]]:
    """channels-redis hosts: one per URL of REDIS_URL (comma-separated: shards, among which
    channels-redis spreads groups and channels by a hash of their names), or Sentinel's."""
    if REDIS_SENTINELS:
        return [redis_host(REDIS_URL)]
    return [redis_host(url.strip()) for url in REDIS_URL.split(",") if url.strip()]


def redis_host(url: str) -> dict[str, object]:
    """channels-redis host settings for one Redis URL, or from REDIS_SENTINELS for Sentinel."""
    # socket_timeout=None: redis-py 8's 5 s default equals the core layer's blocking-pop
    # timeout, so every idle socket would be dropped with 1011 (channels_redis#422).
    if REDIS_SENTINELS:
        master = os.environ.get("REDIS_SENTINEL_MASTER", "mymaster")
        host: dict[str, object] = {"sentinels": REDIS_SENTINELS, "master_name": master}
        if os.environ.get("REDIS_PASSWORD"):
            host["password"] = os.environ["REDIS_PASSWORD"]
        return {**host, "socket_timeout": None}
    if not url.startswith(("redis://", "rediss://")):
        raise SettingsError(
            f"REDIS_URL must start with redis:// or rediss://, not {url.split(':')[0]!r}."
        )
    return {"address": url, "socket_timeout": None}


# Each worker's fan-out (realtime/messaging/layer_link.py) renews its group memberships every
# REALTIME_FANOUT_REJOIN seconds, and every REALTIME_FANOUT_CHECK seconds sends itself an
# event through the layer that must come back within REALTIME_FANOUT_CHECK_TIMEOUT seconds.
# Set here only when given: realtime/conf.py has the defaults (the rejoin's follows the group
# expiry) and the system checks (realtime.E001, E004) refuse wrong values.
# The core layer forgets a group member that has not renewed its membership for this long.
REDIS_GROUP_EXPIRY = envint("REDIS_GROUP_EXPIRY", 86400)
for _name in (
    "REALTIME_FANOUT_REJOIN",
    "REALTIME_FANOUT_CHECK",
    "REALTIME_FANOUT_CHECK_TIMEOUT",
    "REALTIME_SESSION_CHECK",
    # Seconds between the server's WebSocket pings to an idle socket (`serve --ping-interval`).
    "REALTIME_WS_PING_INTERVAL",
    # Topics (docs/topics.md): history per topic, largest message, subscriptions per socket,
    # how long a killed worker's users stay listed on presence topics, and presence metadata
    # (the largest, the seconds between two writes of one user's).
    "REALTIME_TOPIC_HISTORY_SIZE",
    "REALTIME_TOPIC_HISTORY_TTL",
    "REALTIME_TOPIC_MAX_DATA",
    "REALTIME_WS_MAX_SUBSCRIPTIONS",
    # Live HTML (docs/live-html.md): how long a signed stream name in a page holds.
    "REALTIME_STREAM_SIGNATURE_MAX_AGE",
    "REALTIME_PRESENCE_TTL",
    # Clients publishing (docs/topics.md): rate per publisher and topic, how long a client id
    # is remembered, and the backlog past which ephemeral messages are dropped.
    "REALTIME_TOPIC_PUBLISH_RATE",
    "REALTIME_TOPIC_PUBLISH_BURST",
    "REALTIME_PUBLISH_ID_TTL",
    "REALTIME_EPHEMERAL_BACKLOG",
    "REALTIME_PUBLISH_THREADS",
    "REALTIME_PUBLISHER_RATE",
    "REALTIME_PUBLISHER_BURST",
    "REALTIME_PRESENCE_META_MAX",
    "REALTIME_PRESENCE_UPDATE_INTERVAL",
    # Calls with a reply (docs/rpc.md): deadline, calls in flight per socket, threads.
    "REALTIME_RPC_TIMEOUT",
    "REALTIME_RPC_MAX_IN_FLIGHT",
    "REALTIME_RPC_THREADS",
    # Seconds between sweeps of the streams' history (docs/operations.md).
    "REALTIME_HISTORY_SWEEP_INTERVAL",
    # The admin's live view (docs/operations.md): seconds between updates.
    "REALTIME_LIVE_STATS_INTERVAL",
    # The HTTP publish API (docs/operations.md): requests per token per window of seconds.
    "REALTIME_API_RATE_LIMIT",
    "REALTIME_API_RATE_WINDOW",
    # Sign-in throttling (docs/security.md): failures per window, per address and per account.
    "REALTIME_SIGNIN_WINDOW",
    "REALTIME_SIGNIN_MAX_PER_ADDRESS",
    "REALTIME_SIGNIN_MAX_PER_ACCOUNT",
    # Replays per second and at once, per socket and per client address (docs/protocol.md).
    "REALTIME_REPLAY_RATE",
    "REALTIME_REPLAY_BURST",
    "REALTIME_REPLAY_ADDRESS_RATE",
    "REALTIME_REPLAY_ADDRESS_BURST",
):
    if os.environ.get(_name):
        globals()[_name] = envint(_name, 0)


def channel_layer_config() -> dict[str, object]:
    """channels-redis CONFIG: the host, and for the core layer its group expiry."""
    config: dict[str, object] = {"hosts": redis_hosts()}
    if REDIS_CHANNEL_LAYER == "core":
        config["group_expiry"] = REDIS_GROUP_EXPIRY
    return config


if REDIS_URL or REDIS_SENTINELS:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": REDIS_CHANNEL_LAYERS[REDIS_CHANNEL_LAYER],
            "CONFIG": channel_layer_config(),
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Incoming WebSocket messages are small JSON objects; 64 KiB leaves room and bounds memory.
# Larger messages are refused by daphne with close code 1009. Read by runserver and serve.
REALTIME_WS_MAX_MESSAGE_SIZE = envint("REALTIME_WS_MAX_MESSAGE_SIZE", 64 * 1024)
# daphne's runserver reads these (RealtimeServer caps them at REALTIME_WS_MAX_MESSAGE_SIZE anyway).
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = DAPHNE_WEBSOCKET_MAX_FRAME_SIZE = REALTIME_WS_MAX_MESSAGE_SIZE

# Resume after a reconnect: how far back the server replays missed broadcasts (docs/protocol.md).
REALTIME_RESUME_MAX_COUNT = envint("REALTIME_RESUME_MAX_COUNT", 500)
REALTIME_RESUME_MAX_AGE = envint("REALTIME_RESUME_MAX_AGE", 3600)

# Garbage collection in server processes (realtime/server/collector.py): allocations between two
# collections of the youngest generation, after start-up objects are frozen. 0: Python's defaults.
REALTIME_GC_THRESHOLD = envint("REALTIME_GC_THRESHOLD", 10_000)

REALTIME_CERT_DIR = Path(os.environ.get("REALTIME_CERT_DIR", str(BASE_DIR / "certs")))
# certbot certonly --webroot -w DIR: `serve --redirect-http 80` answers its challenges.
if os.environ.get("REALTIME_ACME_WEBROOT"):
    REALTIME_ACME_WEBROOT = os.environ["REALTIME_ACME_WEBROOT"]

# --- TLS: the server's profile, and Redis over TLS (docs/tls.md) ----------------------------

# Kept inside this block on purpose: the module is pure data and needs no app loading.
from realtime.tls.profiles import DEFAULT_PROFILE, tls_profile  # noqa: E402

# Mozilla's "intermediate" (TLS 1.2 and 1.3) or "modern" (TLS 1.3 only) profile, served by
# `serve` and `runserver --tls`. Plain daphne takes it in the endpoint: realtime:...:profile=.
REALTIME_TLS_PROFILE = os.environ.get("REALTIME_TLS_PROFILE", "") or DEFAULT_PROFILE
try:
    tls_profile(REALTIME_TLS_PROFILE, what="REALTIME_TLS_PROFILE")
except ValueError as exc:
    raise SettingsError(str(exc)) from None

REDIS_TLS_FILES = {
    "ssl_ca_certs": "REDIS_CA_FILE",
    "ssl_certfile": "REDIS_CLIENT_CERT",
    "ssl_keyfile": "REDIS_CLIENT_KEY",
}


def redis_tls_options() -> dict[str, str]:
    """redis-py's ssl_* options for a rediss:// REDIS_URL, from the REDIS_TLS_FILES variables.

    Only rediss:// gets them: a plain connection refuses ssl_* options with a TypeError
    (channels_redis#371), and a CA file next to a plain URL would be a false sense of TLS.
    """
    options = {}
    for option, name in REDIS_TLS_FILES.items():
        path = os.environ.get(name, "")
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise SettingsError(f"{name}: cannot read the file {path}.")
        if path:
            options[option] = path
    if options and (REDIS_SENTINELS or not REDIS_URL.startswith("rediss://")):
        names = ", ".join(REDIS_TLS_FILES[option] for option in options)
        # Only the scheme is shown: the URL may hold a password.
        scheme = REDIS_URL.split(":", 1)[0] + "://" if REDIS_URL else "unset"
        raise SettingsError(
            f"{names} set, but REDIS_URL is {scheme}: these settings are for Redis over TLS, "
            "a rediss:// REDIS_URL (without REDIS_SENTINELS)."
        )
    if "ssl_keyfile" in options and "ssl_certfile" not in options:
        raise SettingsError("REDIS_CLIENT_KEY needs REDIS_CLIENT_CERT (the client certificate).")
    return options


REDIS_TLS_OPTIONS = redis_tls_options()
if REDIS_TLS_OPTIONS:
    # The same host dict feeds channels-redis and realtime/messaging/redis_client.py
    # (presence, commands).
    for _host in CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]:
        _host.update(REDIS_TLS_OPTIONS)

# --- WebSocket hardening: origins, TLS, limits (docs/security.md) ---------------------------


def websocket_origins(name: str) -> list[str]:
    """Full origins (scheme://host[:port]): a bare host would match any scheme and port."""
    origins = [origin.lower().rstrip("/") for origin in envlist(name, [])]
    for origin in origins:
        scheme, _, host = origin.partition("://")
        if scheme not in ("http", "https") or not host or "/" in host:
            raise SettingsError(
                f"{name} entries must be origins like https://app.example.org:8443, not {origin!r}."
            )
    return origins


# Unset: AllowedHostsOriginValidator (the Origin's host must be in ALLOWED_HOSTS, any port).
# Set: only these exact origins, so scheme and port matter.
REALTIME_ALLOWED_ORIGINS = websocket_origins("REALTIME_ALLOWED_ORIGINS")
# GET /metrics (docs/operations.md): who may scrape it. Set only when given (realtime/conf.py
# has the defaults: loopback, and no token).
if os.environ.get("REALTIME_METRICS_ALLOWED_ADDRESSES") is not None:
    REALTIME_METRICS_ALLOWED_ADDRESSES = envlist("REALTIME_METRICS_ALLOWED_ADDRESSES", [])
if os.environ.get("REALTIME_METRICS_TOKEN"):
    REALTIME_METRICS_TOKEN = os.environ["REALTIME_METRICS_TOKEN"]
# Refuse (close 1008) a WebSocket that came neither over TLS nor through a trusted https proxy.
REALTIME_REQUIRE_TLS = envbool("REALTIME_REQUIRE_TLS", not DEBUG)
# permessage-deflate for WebSocket clients that offer it (realtime/server/compression.py).
REALTIME_WS_COMPRESSION = envbool("REALTIME_WS_COMPRESSION", True)
# Incoming messages per socket: a token bucket refilled at RATE per second holding BURST.
REALTIME_WS_RATE = envint("REALTIME_WS_RATE", 10)
REALTIME_WS_BURST = envint("REALTIME_WS_BURST", 20)
REALTIME_WS_FRAME_RATE = envint("REALTIME_WS_FRAME_RATE", 200)
REALTIME_WS_FRAME_BURST = envint("REALTIME_WS_FRAME_BURST", 400)
REALTIME_WS_MAX_UNSENT_BYTES = envint("REALTIME_WS_MAX_UNSENT_BYTES", 1024 * 1024)
REALTIME_HTTP_BODY_MIN_RATE = envint("REALTIME_HTTP_BODY_MIN_RATE", 10_000)
REALTIME_MAX_CONNECTIONS_PER_ADDRESS = envint("REALTIME_MAX_CONNECTIONS_PER_ADDRESS", 256)
# Seconds without an incoming message before the server closes a socket (4000); 0: never.
REALTIME_WS_IDLE_TIMEOUT = envint("REALTIME_WS_IDLE_TIMEOUT", 300)
# Seconds a connection gets, in total, to finish TLS and send its first request's headers, and
# the application to accept a WebSocket (realtime/server/request_deadline.py).
REALTIME_WS_HANDSHAKE_TIMEOUT = envint("REALTIME_WS_HANDSHAKE_TIMEOUT", 10)
if REALTIME_WS_HANDSHAKE_TIMEOUT < 1:
    raise SettingsError("REALTIME_WS_HANDSHAKE_TIMEOUT must be at least 1 (seconds).")
# Open WebSockets per client address in each server process; 0: no cap.
REALTIME_WS_MAX_PER_CLIENT = envint("REALTIME_WS_MAX_PER_CLIENT", 100)

# --- Security -------------------------------------------------------------------------------

# Behind a TLS-terminating proxy, set DJANGO_TRUST_PROXY_HEADERS=1 so that X-Forwarded-Proto
# decides whether a request (HTTP or WebSocket) is secure. Never set it without such a proxy:
# any client could then claim to be on https.
if envbool("DJANGO_TRUST_PROXY_HEADERS"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The proxies and load balancers whose X-Forwarded-For entry (plain connections, with the
# variable above) or PROXY-protocol header (serve --proxy-protocol) names the client; any other
# peer's forwarding headers are removed before Django sees them (docs/security.md).
REALTIME_TRUSTED_PROXIES = envlist("REALTIME_TRUSTED_PROXIES", ["127.0.0.1", "::1"])

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

if not DEBUG:
    SECURE_SSL_REDIRECT = envbool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = envbool("DJANGO_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading is a commitment for the whole domain that only its owner can make;
        # it stays opt-in (DJANGO_HSTS_PRELOAD=1), so its reminder is silenced.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

# Logs (docs/operations.md): REALTIME_LOG_FORMAT text (default) or json (one object a line,
# every logger); REALTIME_ACCESS_LOG=1 adds a line per request and WebSocket event;
# REALTIME_LOG_MASK_ADDRESSES=1 shortens client addresses (IPv4 /24, IPv6 /48).
try:
    LOGGING = logging_config(
        os.environ.get("REALTIME_LOG_FORMAT", "text"),
        access_log=envbool("REALTIME_ACCESS_LOG", False),
        mask_addresses=envbool("REALTIME_LOG_MASK_ADDRESSES", False),
    )
except ValueError as error:
    raise SettingsError(str(error)) from None
