"""ASGI middleware for WebSockets: a `scheme` the project can rely on, origins, TLS required.

The scheme is "wss" only when the socket arrived over TLS (as RealtimeServer reports it from
the transport), or when Django is told to trust a TLS-terminating proxy
(SECURE_PROXY_SSL_HEADER, set by DJANGO_TRUST_PROXY_HEADERS=1) and that proxy says https.
A server that does not report the scheme at all gets "ws": unknown is never taken as secure.

`origin_validator()` picks Channels' origin check (403 before the consumer runs) from the
settings and logs why it refused; `RequireTLSMiddleware` closes sockets that are not "wss"
with 1008 when REALTIME_REQUIRE_TLS is on (docs/security.md).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import ParseResult, urlparse, urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings

from realtime.common.close_codes import POLICY_VIOLATION
from realtime.conf import conf
from realtime.server import prometheus
from realtime.upstream import OriginValidator

logger = logging.getLogger("realtime.websocket.middleware")


_warned_missing_scheme = False


def proxy_scheme(scope: dict[str, Any]) -> str | None:
    """The scheme a trusted proxy claims, or None when none is trusted or none is claimed."""
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if not proxy_header:
        return None
    meta_name, secure_value = proxy_header
    wanted = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin1")
    for name, value in scope.get("headers", []):
        if name == wanted:
            # As Django's HttpRequest.scheme: the first value decides.
            first = value.decode("latin1").split(",")[0].strip()
            return "wss" if first == secure_value else "ws"
    return None


def server_scheme(scope: dict[str, Any]) -> str:
    """The scheme the server saw on the transport; "ws" (and one warning) when it did not say."""
    global _warned_missing_scheme
    scheme = scope.get("scheme")
    if scheme in ("ws", "wss"):
        return scheme
    if not _warned_missing_scheme:
        _warned_missing_scheme = True
        logger.warning(
            "The ASGI server did not put a scheme in the WebSocket scope, so no socket can be "
            "known to be secure. Serve realtime.routing.websocket_application() with daphne, "
            "runserver or serve, which use realtime.server.daphne_server.RealtimeServer."
        )
    return "ws"


class TransportSchemeMiddleware:
    """Sets scope["scheme"] to "wss" or "ws" from the transport or a trusted proxy."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            scheme = proxy_scheme(scope) or server_scheme(scope)
            scope = {**scope, "scheme": scheme}
        return await self.app(scope, receive, send)


# --- Origins ---------------------------------------------------------------------------------

DEFAULT_PORTS = {"https": 443, "http": 80}
MAX_LOGGED_ORIGINS = 100  # distinct refused origins logged per process: a client picks them
_logged_origins: set[str] = set()


def describe_origin(parsed: ParseResult | None) -> str:
    """The Origin header as received, shortened, for a log line."""
    if parsed is None:
        return "(no Origin header)"
    return repr(parsed.geturl()[:200])


def refusal_reason(parsed: ParseResult | None, by_origin: bool | str) -> str:
    """Why an origin was refused, in terms of the setting an operator would change (or the
    reason itself, when given as text)."""
    if isinstance(by_origin, str):
        return by_origin
    if parsed is None:
        return "browsers always send Origin; other clients must send it too"
    if parsed.hostname is None:
        return (
            "an opaque origin (a sandboxed page, a file: URL, a privacy redirect) is never trusted"
        )
    if by_origin:
        return "it is not in REALTIME_ALLOWED_ORIGINS (scheme, host and port must all match)"
    return f"host {parsed.hostname!r} is not in ALLOWED_HOSTS (DJANGO_ALLOWED_HOSTS)"


def log_refused_origin(parsed: ParseResult | None, by_origin: bool | str) -> None:
    """One WARNING per distinct origin: a wrong ALLOWED_HOSTS otherwise fails silently (403)."""
    origin = describe_origin(parsed)
    if origin in _logged_origins or len(_logged_origins) > MAX_LOGGED_ORIGINS:
        return
    _logged_origins.add(origin)
    if len(_logged_origins) > MAX_LOGGED_ORIGINS:
        logger.warning("Refused WebSocket origins: too many to log; not logging more.")
        return
    logger.warning(
        "Refused a WebSocket from origin %s with 403: %s.",
        origin,
        refusal_reason(parsed, by_origin),
    )


class LoggingOriginValidator(OriginValidator):
    """Channels' OriginValidator (403 before the consumer runs) that says why it refused.
    `valid_origin` is not in Channels' docs (realtime.upstream's ORIGIN_VALIDATOR_HOOKS)."""

    def __init__(self, application: Any, allowed_origins: list[str], *, by_origin: bool) -> None:
        super().__init__(application, allowed_origins)
        self.by_origin = by_origin

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        valid = super().valid_origin(parsed_origin)
        if not valid:
            log_refused_origin(parsed_origin, self.by_origin)
            prometheus.refuse("origin")
        return valid


def origin_validator(app: Any) -> Any:
    """REALTIME_ALLOWED_ORIGINS when set (exact scheme, host and port); else ALLOWED_HOSTS,
    which compares the Origin's host, like Channels' AllowedHostsOriginValidator, and with
    REALTIME_REQUIRE_TLS on also its scheme (https) and port (the one the socket was opened
    on): a page of another service on the same host (http://localhost:1) is not this site."""
    if conf.REALTIME_ALLOWED_ORIGINS:
        return LoggingOriginValidator(app, conf.REALTIME_ALLOWED_ORIGINS, by_origin=True)
    by_host = LoggingOriginValidator(app, allowed_hosts(), by_origin=False)
    return SecureSameSiteOrigin(by_host)


def host_header_port(scope: dict[str, Any]) -> int:
    """The port the client opened the socket on, from its Host header (443 when it names
    none: the default of wss)."""
    for name, value in scope.get("headers", []):
        if name == b"host":
            port = urlsplit("//" + value.decode("latin1")).port
            return port if port is not None else 443
    return 443


def origin_of(scope: dict[str, Any]) -> ParseResult | None:
    for name, value in scope.get("headers", []):
        if name == b"origin":
            return urlparse(value.decode("latin1"))
    return None


class SecureSameSiteOrigin:
    """With REALTIME_REQUIRE_TLS on, a WSS handshake whose Origin is not https on the port the
    socket was opened on is refused with 403 (before the host check, which still applies).
    No Origin at all is left to the host check, which refuses it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        # A socket not over TLS is RequireTLSMiddleware's to close, with its clearer 1008.
        if scope.get("scheme") == "wss" and conf.REALTIME_REQUIRE_TLS:
            reason = self.refusal(scope)
            if reason is not None:
                log_refused_origin(origin_of(scope), reason)
                prometheus.refuse("origin")
                return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)

    @staticmethod
    def refusal(scope: dict[str, Any]) -> str | None:
        try:
            origin = origin_of(scope)
            if origin is None or origin.hostname is None:
                return None
            port = origin.port if origin.port is not None else DEFAULT_PORTS.get(origin.scheme)
            served = host_header_port(scope)
        except (UnicodeDecodeError, ValueError):
            return "the Origin or Host header is not valid"
        if origin.scheme != "https":
            return "with REALTIME_REQUIRE_TLS only https origins are this site"
        if port != served:
            return (
                "its port is not the one this socket was opened on (a page of another service "
                "on the same host); list it in REALTIME_ALLOWED_ORIGINS to allow it"
            )
        return None


def allowed_hosts() -> list[str]:
    """ALLOWED_HOSTS, or, as Django's own host check does with DEBUG on and the list empty
    (a new startproject), the local names."""
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return list(settings.ALLOWED_HOSTS)


# --- TLS required ----------------------------------------------------------------------------


async def accept_then_close(receive: Any, send: Any, code: int, reason: str) -> None:
    """Refuse a socket with a close code the client can read.

    A refused handshake can only be an HTTP status, which browsers hide (the page sees 1006).
    A close code and reason need an open socket, so accept first, then close at once.
    """
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason})


class RequireTLSMiddleware:
    """With REALTIME_REQUIRE_TLS, close a socket whose scheme is not "wss" with 1008.

    Runs after TransportSchemeMiddleware, whose scheme comes from the transport or a trusted
    proxy. The page's client does not reconnect after 1008.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if (
            scope["type"] == "websocket"
            and conf.REALTIME_REQUIRE_TLS
            and scope.get("scheme") != "wss"
        ):
            logger.info("Closed a WebSocket that did not come over TLS (%d).", POLICY_VIOLATION)
            prometheus.refuse("tls_required")
            reason = "TLS required: connect with wss://"
            return await accept_then_close(receive, send, POLICY_VIOLATION, reason)
        return await self.app(scope, receive, send)
