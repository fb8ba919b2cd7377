"""What the server floor is told: one plain configuration object, as uvicorn's `Config`.

The server floor (realtime/server/, realtime/tls/) reads no settings module of its own. The app
builds a `ServerConfig` from its settings (`realtime.conf.server_config`) and hands the floor
the function that does so (`provide`, from the app's `AppConfig.ready()`), so that each read
sees the settings of that moment, tests' overrides included. A process with no app (a
`realtime:` endpoint serving a bare ASGI application) gets the defaults below, or the
environment variables named after the settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    """Every value the server floor uses, with its default. Names follow the REALTIME_*
    settings they come from (README's table); realtime/conf.py takes these defaults from here
    (`SERVER_DEFAULTS`), so each is written once."""

    max_connections_per_address: int = 256
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    forwarded_headers: bool = False  # Django's SECURE_PROXY_SSL_HEADER is set
    # Incoming WebSocket messages are small JSON objects: 64 KiB leaves room and bounds memory.
    ws_max_message_size: int = 64 * 1024
    ws_handshake_timeout: int = 10
    ws_compression: bool = True
    ws_frame_rate: int = 200
    ws_frame_burst: int = 400
    ws_max_unsent_bytes: int = 1024 * 1024
    http_body_min_rate: int = 10_000
    gc_threshold: int = 10_000
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    channel_layer: str = ""  # one line on the channel layer, said when a worker starts


SERVER_DEFAULTS = ServerConfig()


def from_environment() -> ServerConfig:
    """The defaults, with the two an operator may need without an app from the environment."""
    config = SERVER_DEFAULTS
    per_address = os.environ.get("REALTIME_MAX_CONNECTIONS_PER_ADDRESS")
    proxies = os.environ.get("REALTIME_TRUSTED_PROXIES")
    return ServerConfig(
        max_connections_per_address=int(per_address or config.max_connections_per_address),
        trusted_proxies=tuple(p.strip() for p in proxies.split(","))
        if proxies
        else (config.trusted_proxies),
    )


_provider: Callable[[], ServerConfig] = from_environment


def provide(provider: Callable[[], ServerConfig]) -> None:
    """Have the floor read its configuration from `provider` (the app's, at start-up)."""
    global _provider
    _provider = provider


def current() -> ServerConfig:
    """The configuration now."""
    return _provider()
