"""The app's Prometheus metrics, and GET /metrics, which serves them with the server floor's
(realtime/server/prometheus.py: its own counters and the whole host's exposition).

The metrics: sockets open by audience, closes, messages in and out, deliveries and the
catch-up's, the delivery latency, calls by outcome and handlers running, the fan-out's losses
and regains of the channel layer.
Deliveries and their latency are counted once per message and worker, not once per socket, so
the fan-out's per-socket path costs nothing more. /metrics answers only a client address in
REALTIME_METRICS_ALLOWED_ADDRESSES (the address as the server decided it,
realtime/server/client_address.py) or the bearer REALTIME_METRICS_TOKEN; anyone else gets 403.
Each metric, and how to scrape it: docs/operations.md ("Metrics").
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import Counter, Gauge, Histogram

from realtime.common.addresses import parse_host
from realtime.conf import conf
from realtime.server.prometheus import CONTENT_TYPE, exposition

BEARER = "Bearer "

OPEN_SOCKETS = Gauge(
    "realtime_open_sockets",
    "WebSockets open now, by worker, scheme (wss or ws) and highest audience.",
    ["worker", "scheme", "audience"],
    multiprocess_mode="livesum",
)
CLOSES = Counter("realtime_closes", "WebSockets closed, by close code.", ["code"])
MESSAGES = Counter(
    "realtime_messages",
    "WebSocket messages, in (from clients) and out (to clients), by their type.",
    ["direction", "type"],
)
DELIVERIES = Counter(
    "realtime_deliveries",
    "Broadcasts and topic messages written to sockets (live, replayed or from the catch-up).",
    ["kind"],
)
CATCH_UP_DELIVERIES = Counter(
    "realtime_catchup_deliveries",
    "Deliveries of messages a worker read from the database because the channel layer did not "
    "bring them (a gap in offsets, or the periodic catch-up).",
    ["kind"],
)
DELIVERY_LATENCY = Histogram(
    "realtime_delivery_latency_seconds",
    "From a message's publish to the end of a worker's writes of it to its sockets.",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RPC_CALLS = Counter(
    "realtime_rpc_calls",
    "Calls from clients answered, by outcome: ok, or the reply's error code.",
    ["outcome"],
)
RPC_RUNNING = Gauge(
    "realtime_rpc_running",
    "Call handlers running now, by kind (sync: in a thread; async): a sync one past its "
    "timeout still counts until it returns.",
    ["kind"],
    multiprocess_mode="livesum",
)
LAYER_LOSSES = Counter(
    "realtime_channel_layer_losses", "Times a worker's fan-out lost the channel layer."
)
LAYER_RECONNECTS = Counter(
    "realtime_channel_layer_reconnects",
    "Times a worker's fan-out heard the channel layer again after losing it.",
)
PUBLISHES = Counter(
    "realtime_client_publishes",
    "Clients' publishes, by outcome: stored, repeated (a client id seen before), ephemeral, "
    "or the error code they were answered.",
    ["outcome"],
)
EPHEMERAL = Counter(
    "realtime_ephemeral_messages",
    "Ephemeral messages for this worker's sockets: delivered, or dropped for a socket that "
    "was behind (never counted as lost).",
    ["outcome"],
)


def close_code_label(code: Any) -> str:
    """A close code as a label: the standard ones and 4000-4010 (the app's) as they are, any
    other a client sends as "other", so that it cannot make thousands of series."""
    if isinstance(code, int) and (1000 <= code <= 1015 or 4000 <= code <= 4010):
        return str(code)
    return "other"


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
