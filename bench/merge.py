"""One set of fan-out sockets held by several loadgen processes: their answers merged into the
answer one process would give, so that bench/report.py reads them alike.

A process may hold at most RLIMIT_NOFILE descriptors (20,000 here), so 15,000 sockets are
spread over a few processes. Percentiles do not merge: each process answers `expect` with every
latency (loadgen's "raw"), and the p50, p99 and max here are taken over all of them, with
loadgen's own rule (the value at floor(fraction x count) of the sorted latencies).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency_stats(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "received": len(ordered),
        "p50_ms": percentile(ordered, 0.5),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] if ordered else None,
    }


def merge_opened(answers: list[dict[str, Any]]) -> dict[str, Any]:
    opened = sum(answer["opened"] for answer in answers)
    seconds = max(answer["seconds"] for answer in answers)
    return {
        "event": "opened",
        "opened": opened,
        "failed": sum(answer["failed"] for answer in answers),
        "first_error": next((a["first_error"] for a in answers if a["first_error"]), None),
        "seconds": seconds,
        "per_second": round(opened / seconds, 3) if seconds else None,
        "deflate_offered": answers[0].get("deflate_offered", False),
        "deflate_negotiated": sum(answer.get("deflate_negotiated", 0) for answer in answers),
        "deflate_params": merge_counts(answer.get("deflate_params", {}) for answer in answers),
        "processes": [answer["opened"] for answer in answers],
    }


def merge_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            merged[key] = merged.get(key, 0) + value
    return merged


def merge_seq(rows: list[dict[str, Any]], expected: int) -> dict[str, Any]:
    """One broadcast's row from each process's raw row for it."""
    latencies = [value for row in rows for value in row["latencies"]]
    by_worker: dict[str, list[float]] = {}
    for row in rows:
        for worker, values in row["worker_latencies"].items():
            by_worker.setdefault(worker, []).extend(values)
    stats = latency_stats(latencies)
    return {
        "seq": rows[0]["seq"],
        **stats,
        "lost": max(expected - stats["received"], 0),
        "frame_bytes": next((row["frame_bytes"] for row in rows if row["frame_bytes"]), None),
        "per_worker": {worker: latency_stats(values) for worker, values in by_worker.items()},
        "sent": next((row["sent"] for row in rows if row["sent"]), None),
        "last": max((row["last"] for row in rows if row["last"]), default=None),
    }


def merge_rounds(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """loadgen's `round` answer (as without "raw") from every process's raw answer."""
    expected = sum(answer["expected"] for answer in answers)
    seqs = answers[0]["seqs"]
    per_seq = [
        merge_seq([answer["per_seq"][index] for answer in answers], expected)
        for index in range(len(seqs))
    ]
    sent = [row["sent"] for row in per_seq if row["sent"]]
    last = [row["last"] for row in per_seq if row["last"]]
    span = max(last) - min(sent) if sent and last else None
    received = sum(row["received"] for row in per_seq)
    client_cpu = [answer["client_cpu_percent"] for answer in answers]
    return {
        "event": "round",
        "seqs": seqs,
        "expected": expected,
        "received": received,
        "lost": sum(row["lost"] for row in per_seq),
        "duplicates": sum(answer["duplicates"] for answer in answers),
        "span_ms": None if span is None else round(span, 3),
        "deliveries_per_second": round(received / span * 1000, 3) if span else None,
        "per_seq": [{k: v for k, v in row.items() if k not in ("sent", "last")} for row in per_seq],
        "closed_early": sum(answer["closed_early"] for answer in answers),
        # The busiest process: near 100% of a core, the client may be what limits the figures.
        "client_cpu_percent": max(client_cpu),
        "client_cpu_percents": client_cpu,
    }


def merge_closed(answers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "event": "closed",
        "closed_early": sum(answer["closed_early"] for answer in answers),
    }
