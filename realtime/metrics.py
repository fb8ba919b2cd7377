"""GET /metrics: the host's Prometheus metrics (realtime/server/metrics.py), for a scraper.

Answered only to a client address in REALTIME_METRICS_ALLOWED_ADDRESSES (addresses or
networks; default: loopback) or to a request with `Authorization: Bearer
<REALTIME_METRICS_TOKEN>` (unset: no token opens it). Anyone else gets 403 and nothing about
what is counted. The address is the client's as the server decided it
(realtime/server/client_address.py: the peer, the PROXY header's source, or the X-Forwarded-For
entry a trusted proxy wrote), never what a client wrote itself.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from realtime.common.addresses import parse_host
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


def from_allowed_address(request: HttpRequest) -> bool:
    address = parse_host(str(request.META.get("REMOTE_ADDR") or ""))
    return address is not None and any(address in network for network in allowed_networks())


def has_token(request: HttpRequest) -> bool:
    token = conf.REALTIME_METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if not token or not given.startswith(BEARER):
        return False
    return hmac.compare_digest(given[len(BEARER) :].encode(), token.encode())
