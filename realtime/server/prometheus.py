"""Prometheus metrics (prometheus_client): what the server floor counts, and the whole host's
exposition.

A scrape reaches whichever of `serve`'s workers the kernel hands it to and must still see the
whole host, so the supervisor gives every worker one private directory (prometheus_client's
multiprocess mode, PROMETHEUS_MULTIPROC_DIR) and `exposition()` sums it; `forget_worker` drops
an exited worker's live gauges, its counters stay. A single process without that directory uses
the default registry. The floor counts handshakes (refused here, accepted by the app) and TLS
connections; the app's own metrics are in realtime/ops/metrics.py. Every name starts with
`realtime_`. docs/operations.md ("Metrics").
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter as CounterOf
from functools import cache
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, multiprocess
from twisted.internet.interfaces import ISSLTransport

DIRECTORY_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

HANDSHAKES = Counter(
    "realtime_handshakes",
    "WebSocket handshakes: accepted, or refused with the reason (origin, tls_required, "
    "per_address_cap, rate, size, deadline, layer_lost).",
    ["outcome", "reason"],
)
TLS_CONNECTIONS = Counter(
    "realtime_tls_connections",
    "New TLS connections, by protocol version and key-exchange group.",
    ["version", "group"],
)


# Refusals since the app last took them (its live view, realtime/ops/live_stats.py).
refused_since: CounterOf[str] = CounterOf()


def refuse(reason: str) -> None:
    """Count a refused handshake or connection, for Prometheus and for the live view."""
    child(HANDSHAKES, "refused", reason).inc()
    refused_since[reason] += 1


def take_refused() -> CounterOf[str]:
    global refused_since
    taken, refused_since = refused_since, CounterOf()
    return taken


def give_back_refused(counts: CounterOf[str]) -> None:
    refused_since.update(counts)


@cache
def child(metric: Any, *labels: str) -> Any:
    """A metric's child for these labels, looked up once (the hot paths count with it)."""
    return metric.labels(*labels)


def count_tls_connection(transport: Any) -> None:
    """Count a connection's TLS version and key-exchange group (nothing for plain TCP)."""
    if not ISSLTransport.providedBy(transport):
        return
    try:
        connection = transport.getHandle()
        version = connection.get_protocol_version_name()
        group = connection.get_group_name() or "unknown"  # pyOpenSSL 24.3+, OpenSSL 3.2+
    except Exception:  # noqa: BLE001 - a metric must never fail a request
        version, group = "unknown", "unknown"
    child(TLS_CONNECTIONS, version, group).inc()


def exposition() -> bytes:
    """The text a scrape gets: every worker of this host under serve, else this process."""
    if os.environ.get(DIRECTORY_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return prometheus_client.generate_latest(registry)
    return prometheus_client.generate_latest()


def make_directory() -> str:
    """A new, empty, private directory for the workers' values (the supervisor's)."""
    return tempfile.mkdtemp(prefix="realtime-metrics-")


def forget_worker(directory: str, pid: int) -> None:
    """A worker exited: its live gauges (open sockets) no longer count."""
    multiprocess.mark_process_dead(pid, directory)
