"""System checks of the realtime settings: a wrong value is an error that names the setting.

Run by every management command (and `manage.py check`), as django-cors-headers does. The ids:

- realtime.E001: a number setting that is not an integer, or is below its minimum;
- realtime.E002: REALTIME_TLS_PROFILE is not a known profile;
- realtime.E003: REALTIME_ALLOWED_ORIGINS holds something that is not a full origin;
- realtime.E004: REALTIME_FANOUT_REJOIN is not shorter than the core layer's group_expiry;
- realtime.E005: "realtime" comes after "django.contrib.staticfiles" in INSTALLED_APPS;
- realtime.E006: REALTIME_REQUIRE_TLS is not True or False;
- realtime.E007: REALTIME_METRICS_ALLOWED_ADDRESSES holds something that is not an address or
  network, or REALTIME_METRICS_TOKEN is set but shorter than 32 characters (guessable);
- realtime.E008: REALTIME_TRUSTED_PROXIES is not a list of addresses or networks;
- realtime.W001 (a warning): the project sets no CHANNEL_LAYERS, so the app uses the in-memory
  layer, which a broadcast from another process (`manage.py broadcast`) cannot reach. Setting
  CHANNEL_LAYERS, to the in-memory layer too, says that this is meant.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from realtime.conf import channel_layer_config, channel_layers_unset, conf
from realtime.server.client_address import TrustedProxies
from realtime.tls.profiles import PROFILES

# Each integer setting and its least allowed value.
MINIMUMS = {
    "REALTIME_WS_MAX_MESSAGE_SIZE": 1,
    "REALTIME_WS_RATE": 0,  # 0: no rate limit
    "REALTIME_WS_BURST": 1,
    "REALTIME_WS_FRAME_RATE": 0,  # 0: no frame budget
    "REALTIME_WS_FRAME_BURST": 1,
    "REALTIME_WS_MAX_UNSENT_BYTES": 0,  # 0: no cap
    "REALTIME_HTTP_BODY_MIN_RATE": 0,  # 0: no body deadline
    "REALTIME_MAX_CONNECTIONS_PER_ADDRESS": 0,  # 0: no cap
    "REALTIME_SIGNIN_WINDOW": 1,
    "REALTIME_API_RATE_LIMIT": 0,  # 0: no limit
    "REALTIME_API_RATE_WINDOW": 1,
    "REALTIME_SESSION_CHECK": 1,
    "REALTIME_LIVE_STATS_INTERVAL": 1,
    "REALTIME_SIGNIN_MAX_PER_ADDRESS": 0,  # 0: no limit
    "REALTIME_SIGNIN_MAX_PER_ACCOUNT": 0,
    "REALTIME_WS_IDLE_TIMEOUT": 0,
    "REALTIME_WS_HANDSHAKE_TIMEOUT": 1,
    "REALTIME_WS_PING_INTERVAL": 1,
    "REALTIME_WS_MAX_PER_CLIENT": 0,
    "REALTIME_RESUME_MAX_COUNT": 1,
    "REALTIME_TOPIC_HISTORY_SIZE": 1,
    "REALTIME_TOPIC_HISTORY_TTL": 1,
    "REALTIME_TOPIC_MAX_DATA": 1,
    "REALTIME_WS_MAX_SUBSCRIPTIONS": 0,  # 0: no topic subscriptions
    "REALTIME_TOPIC_PUBLISH_RATE": 0,  # 0: no rate per topic
    "REALTIME_TOPIC_PUBLISH_BURST": 1,
    "REALTIME_PUBLISH_ID_TTL": 1,
    "REALTIME_STREAM_SIGNATURE_MAX_AGE": 1,
    "REALTIME_EPHEMERAL_BACKLOG": 0,  # 0: only to sockets with nothing waiting
    "REALTIME_PUBLISH_THREADS": 1,
    "REALTIME_PUBLISHER_RATE": 0,  # 0: no rate over all topics
    "REALTIME_PUBLISHER_BURST": 1,
    "REALTIME_PRESENCE_TTL": 3,
    "REALTIME_PRESENCE_META_MAX": 2,  # {}
    "REALTIME_PRESENCE_UPDATE_INTERVAL": 1,
    "REALTIME_RPC_TIMEOUT": 1,
    "REALTIME_RPC_MAX_IN_FLIGHT": 1,
    "REALTIME_RPC_THREADS": 1,
    "REALTIME_RESUME_MAX_AGE": 1,
    "REALTIME_HISTORY_SWEEP_INTERVAL": 1,
    "REALTIME_REPLAY_RATE": 0,  # 0: no budget per socket
    "REALTIME_REPLAY_BURST": 1,
    "REALTIME_REPLAY_ADDRESS_RATE": 0,  # 0: no budget per address
    "REALTIME_REPLAY_ADDRESS_BURST": 1,
    "REALTIME_GC_THRESHOLD": 0,
    "REALTIME_FANOUT_REJOIN": 1,
    "REALTIME_FANOUT_CHECK": 1,
    "REALTIME_FANOUT_CHECK_TIMEOUT": 1,
}


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return [
        *check_numbers(),
        *check_tls_profile(),
        *check_origins(),
        *check_fanout_rejoin(),
        *check_app_order(),
        *check_switches(),
        *check_metrics_access(),
        *check_trusted_proxies(),
        *check_channel_layers_set(),
    ]


def check_numbers() -> list[Error]:
    errors = []
    for name, least in MINIMUMS.items():
        value = getattr(conf, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            errors.append(
                Error(
                    f"{name} must be an integer of at least {least}, not {value!r}.",
                    id="realtime.E001",
                )
            )
    return errors


def check_tls_profile() -> list[Error]:
    if conf.REALTIME_TLS_PROFILE in PROFILES:
        return []
    known = " or ".join(repr(name) for name in PROFILES)
    return [
        Error(
            f"REALTIME_TLS_PROFILE must be {known}, not {conf.REALTIME_TLS_PROFILE!r}.",
            id="realtime.E002",
        )
    ]


def is_origin(origin: Any) -> bool:
    """scheme://host[:port], lower case, no path: a bare host would match any scheme and port."""
    if not isinstance(origin, str):
        return False
    scheme, _, host = origin.partition("://")
    return (
        scheme in ("http", "https") and bool(host) and "/" not in host and origin == origin.lower()
    )


def check_origins() -> list[Error]:
    origins = conf.REALTIME_ALLOWED_ORIGINS
    if isinstance(origins, (list, tuple)) and all(is_origin(origin) for origin in origins):
        return []
    return [
        Error(
            "REALTIME_ALLOWED_ORIGINS must be a list of lower-case origins such as "
            f"'https://app.example.org:8443', not {origins!r}.",
            id="realtime.E003",
        )
    ]


def check_fanout_rejoin() -> list[Error]:
    config = channel_layer_config()
    if not config.get("BACKEND", "").startswith("channels_redis.core."):
        return []
    expiry = config.get("CONFIG", {}).get("group_expiry", 86400)
    rejoin = conf.REALTIME_FANOUT_REJOIN
    if not isinstance(rejoin, int) or rejoin < expiry:
        return []
    return [
        Error(
            f"REALTIME_FANOUT_REJOIN ({rejoin} s) must be shorter than the core layer's "
            f"group_expiry ({expiry} s), or workers drop out of their groups.",
            id="realtime.E004",
        )
    ]


def check_app_order() -> list[Error]:
    apps = list(settings.INSTALLED_APPS)
    names = [app.split(".apps.")[0] for app in apps]
    if "django.contrib.staticfiles" not in names or "realtime" not in names:
        return []
    if names.index("realtime") < names.index("django.contrib.staticfiles"):
        return []
    return [
        Error(
            '"realtime" must come before "django.contrib.staticfiles" in INSTALLED_APPS, '
            "or runserver is staticfiles' own (no --tls, no WebSockets).",
            id="realtime.E005",
        )
    ]


SWITCHES = ("REALTIME_REQUIRE_TLS", "REALTIME_WS_COMPRESSION")


def check_switches() -> list[Error]:
    return [
        Error(f"{name} must be True or False, not {getattr(conf, name)!r}.", id="realtime.E006")
        for name in SWITCHES
        if not isinstance(getattr(conf, name), bool)
    ]


MIN_METRICS_TOKEN = 32


def check_metrics_access() -> list[Error]:
    errors = []
    addresses = conf.REALTIME_METRICS_ALLOWED_ADDRESSES
    try:
        if isinstance(addresses, str):
            raise TypeError
        for address in addresses:
            ipaddress.ip_network(address, strict=False)
    except (TypeError, ValueError):
        errors.append(
            Error(
                "REALTIME_METRICS_ALLOWED_ADDRESSES must be a list of addresses or networks "
                f"such as '127.0.0.1' or '10.0.0.0/8', not {addresses!r}.",
                id="realtime.E007",
            )
        )
    token = conf.REALTIME_METRICS_TOKEN
    if not isinstance(token, str) or (token and len(token) < MIN_METRICS_TOKEN):
        errors.append(
            Error(
                f"REALTIME_METRICS_TOKEN must be empty or at least {MIN_METRICS_TOKEN} "
                "characters (`python -c 'import secrets; print(secrets.token_urlsafe(32))'`).",
                id="realtime.E007",
            )
        )
    return errors


def check_trusted_proxies() -> list[Error]:
    proxies = conf.REALTIME_TRUSTED_PROXIES
    try:
        if isinstance(proxies, str):
            raise TypeError
        TrustedProxies(proxies)
    except (TypeError, ValueError):
        return [
            Error(
                "REALTIME_TRUSTED_PROXIES must be a list of the addresses or networks of your "
                f"proxies or load balancers, such as ['127.0.0.1', '10.0.0.0/8'], not {proxies!r}.",
                id="realtime.E008",
            )
        ]
    return []


def check_channel_layers_set() -> list[Warning]:
    if not channel_layers_unset():
        return []
    return [
        Warning(
            "CHANNEL_LAYERS is not set: realtime uses the in-memory channel layer, which works "
            "within one process: `manage.py broadcast` and `notify` (other processes) cannot "
            "reach the connected sockets, and `serve` runs one worker only.",
            hint=(
                "Set CHANNEL_LAYERS to a Redis layer (docs/existing-project.md), or to "
                '{"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}} if one '
                "process is what you mean."
            ),
            id="realtime.W001",
        )
    ]
