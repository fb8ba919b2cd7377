"""GET /metrics: the host's Prometheus metrics (realtime/server/metrics.py), for a scraper.

Answered only to a client address in REALTIME_METRICS_ALLOWED_ADDRESSES (addresses or
networks; default: loopback) or to a request with `Authorization: Bearer
<REALTIME_METRICS_TOKEN>` (unset: no token opens it). Anyone else gets 403 and nothing about
what is counted. The address is the peer's; when proxy headers are trusted (`serve --plain`
behind an HTTP proxy), the last X-Forwarded-For entry, the one the proxy added: earlier ones
are the client's word (daphne's REMOTE_ADDR is the first). A TCP proxy on the same host (TLS
passthrough, deploy/haproxy) makes every client 127.0.0.1: there, allow no address and use
the token (docs/operations.md).
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from realtime.conf import conf
from realtime.server.metrics import CONTENT_TYPE, exposition

BEARER = "Bearer "


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not (from_allowed_address(request) or has_token(request)):
        return HttpResponse(
            "Metrics are served to the addresses in REALTIME_METRICS_ALLOWED_ADDRESSES or with "
            "the bearer token REALTIME_METRICS_TOKEN.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    response = HttpResponse(exposition(), content_type=CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response


def allowed_networks() -> list[Any]:
    return [ipaddress.ip_network(a, strict=False) for a in conf.REALTIME_METRICS_ALLOWED_ADDRESSES]


def client_address(request: HttpRequest) -> str:
    """The last X-Forwarded-For entry when proxy headers are trusted, else REMOTE_ADDR."""
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        return forwarded.split(",")[-1].strip()
    return request.META.get("REMOTE_ADDR") or ""


def from_allowed_address(request: HttpRequest) -> bool:
    try:
        address = ipaddress.ip_address(client_address(request).split("%")[0])
    except ValueError:
        return False
    if getattr(address, "ipv4_mapped", None) is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allowed_networks())


def has_token(request: HttpRequest) -> bool:
    token = conf.REALTIME_METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if not token or not given.startswith(BEARER):
        return False
    return hmac.compare_digest(given[len(BEARER) :].encode(), token.encode())
