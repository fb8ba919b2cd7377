"""Results of bench/run.py: medians, ratios, targets, the Markdown table and the chart.

    .venv/bin/python -m bench.report [--from bench/results/latest.json] [--update-docs]

Without options it renders latest.md and fanout.png again from latest.json (with --from
bench/results/full.json: full.md and fanout-full.png). `--update-docs`
also pastes the Markdown between the markers of docs/benchmarks.md, so that the document
shows the latest run without hand editing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
DOC_START = "<!-- bench:latest:start (python -m bench.report --update-docs) -->"
DOC_END = "<!-- bench:latest:end -->"
PACKAGES = [
    "Django",
    "channels",
    "channels-redis",
    "daphne",
    "Twisted",
    "autobahn",
    "pyOpenSSL",
    "cryptography",
    "redis",
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "psutil",
    "matplotlib",
]
CODE_DIRS = ("project", "realtime", "twisted")  # the code under test
CLIENT_BOUND = 90.0  # % of a core: above it the load generator, not the server, may be the limit
TARGET_FANOUT_P99_MS = 250.0
TARGET_FANOUT_RATIO = 3.0
TARGET_ECHO_FRACTION = 0.7
TARGET_IDLE_CPU = 1.0  # % of a core, 5,000 idle WSS sockets on 2 workers
TARGET_USER_COST_RATIO = 1.5  # CPU per message to one user: 5,000 sockets open / 100
TARGET_MEMORY_RATIO = 1.0  # KiB per idle WSS socket, project / Node
TARGET_ECHO_NODE_RATIO = 0.5  # echo messages/s over WSS, project / Node
TARGET_HANDSHAKE_NODE_RATIO = 0.9  # handshakes/s, full TLS and resumed, project / Node
TARGET_WIDE_P99_RATIO = 1.0  # p99 of the wide fan-out, project (2 workers) / Node (1 process)
TARGET_DEFLATE_BYTES_RATIO = 0.5  # wire bytes per delivery, permessage-deflate / plain
TARGET_DEFLATE_CPU_RATIO = 1.2  # the servers' CPU per delivery, permessage-deflate / plain


# --- environment -----------------------------------------------------------------------------


def command_output(args: list[str]) -> str | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def git_dirs() -> tuple[Path, Path]:
    """The directory holding HEAD and the one holding the refs: .git twice, or, in a worktree
    (`git worktree add`), the directory its .git file names and that one's common directory."""
    git = ROOT / ".git"
    if not git.is_file():
        return git, git
    own = (ROOT / git.read_text().split(":", 1)[1].strip()).resolve()
    common = own / "commondir"
    return own, (own / common.read_text().strip()).resolve() if common.is_file() else own


def git_commit() -> str | None:
    """HEAD's commit, read from .git's files (no git command runs)."""
    try:
        own, common = git_dirs()
        head = (own / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        for folder in (own, common):
            if (folder / ref).is_file():
                return (folder / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except (OSError, IndexError):
        pass
    return None


def digest_of(folders: Iterable[str]) -> tuple[str, list[Path]]:
    files = sorted(
        path
        for folder in folders
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".mjs")
        and not {"node_modules", "__pycache__", "results"} & set(path.parts)
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16], files


def source_state() -> dict[str, Any]:
    """A digest of the code under test (no git command runs; the tree may hold uncommitted
    work) and its newest file, and one of the harness. Taken at the start and the end of a
    run: a different code digest means the code changed while it ran, so the figures mix
    two versions."""
    digest, files = digest_of(CODE_DIRS)
    newest = max(files, key=lambda path: path.stat().st_mtime)
    modified = datetime.fromtimestamp(newest.stat().st_mtime, UTC)
    return {
        "digest": digest,
        "files": len(files),
        "newest": str(newest.relative_to(ROOT)),
        "newest_modified": modified.isoformat(timespec="seconds"),
        "bench_digest": digest_of(["bench"])[0],
    }


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    from OpenSSL import SSL

    ws_package = ROOT / "bench" / "node" / "node_modules" / "ws" / "package.json"
    redis_version = command_output(["redis-server", "--version"]) or ""
    return {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "memory_gib": memory_gib(),
            "kernel": platform.release(),
            "platform": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            "node": command_output(["node", "--version"]),
            "node_openssl": command_output(["node", "-p", "process.versions.openssl"]),
            "ws": json.loads(ws_package.read_text())["version"] if ws_package.is_file() else None,
            "python_ssl": ssl.OPENSSL_VERSION,
            "pyopenssl_openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
            "redis_server": next(
                (part for part in redis_version.split() if part.startswith("v=")), "?"
            ).removeprefix("v="),
            **package_versions(),
        },
        "git_commit": git_commit(),
    }


# --- summaries -------------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def summarize_echo_peer(entry: dict[str, Any]) -> dict[str, Any]:
    handshakes = entry.get("handshakes", [])
    resumed = entry.get("handshakes_resumed", [])
    echo = entry.get("echo", [])
    idle = entry.get("idle") or {}
    return {
        "handshakes_per_s": median(r["per_second"] for r in handshakes),
        "handshake_errors": sum(r["errors"] for r in handshakes),
        "handshake_client_cpu": median(r["client_cpu_percent"] for r in handshakes),
        "tls": next((r["tls"] for r in handshakes if r.get("tls")), None),
        "resumed_per_s": median(r["per_second"] for r in resumed),
        "resumed_fraction": median(r["reused_fraction"] for r in resumed),
        "resumed_client_cpu": median(r["client_cpu_percent"] for r in resumed),
        "echo_per_s": median(r["per_second"] for r in echo),
        "echo_client_cpu": median(r["client_cpu_percent"] for r in echo),
        "echo_unexpected": sum(r["unexpected"] for r in echo),
        "idle_sockets": idle.get("sockets"),
        "kib_per_socket": idle.get("kib_per_socket"),
        "idle_cpu_percent": idle.get("cpu_percent"),
        "rounds": len(echo),
    }


def summarize_fanout(entry: dict[str, Any]) -> dict[str, Any]:
    rounds, bursts, idle = entry.get("rounds", []), entry.get("bursts", []), entry.get("idle", {})
    firsts = [r["per_seq"][0] for r in rounds]
    return {
        "p50_ms": median(s["p50_ms"] for s in firsts),
        "p99_ms": median(s["p99_ms"] for s in firsts),
        "max_ms": median(s["max_ms"] for s in firsts),
        "worst_max_ms": max((s["max_ms"] for s in firsts if s["max_ms"] is not None), default=None),
        "worst_p99_ms": max((s["p99_ms"] for s in firsts if s["p99_ms"] is not None), default=None),
        # A median hides the odd slow broadcast (a worker in a long GC pause): count them.
        "over_target": sum(
            1 for s in firsts if s["p99_ms"] is None or s["p99_ms"] >= TARGET_FANOUT_P99_MS
        ),
        "lost": sum(r["lost"] for r in rounds),
        "expected": sum(r["expected"] * len(r["seqs"]) for r in rounds),
        "burst_per_s": median(b["deliveries_per_second"] for b in bursts),
        "burst_lost": sum(b["lost"] for b in bursts),
        "burst_expected": sum(b["expected"] * len(b["seqs"]) for b in bursts),
        "frame_bytes": next((s["frame_bytes"] for s in firsts if s["frame_bytes"]), None),
        "opened": entry["open"]["opened"],
        "open_failed": entry["open"]["failed"],
        "open_per_s": entry["open"]["per_second"],
        "kib_per_socket": idle.get("kib_per_socket"),
        "idle_cpu_percent": idle.get("cpu_percent"),
        "idle_redis_cpu_percent": idle.get("redis_cpu_percent"),
        "client_cpu": median(r.get("client_cpu_percent") for r in rounds),
        "per_worker": per_worker(firsts),
        # Server CPU per message to a user with no socket here (the project only).
        "user_cpu_ms": (entry.get("user_message") or {}).get("server_cpu_ms_per_message"),
        "rounds": len(rounds),
        # More than 1: the sockets were spread over several loadgen processes (the wide set).
        "client_processes": entry.get("client_processes", 1),
    }


def per_worker(firsts: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Median p50/p99 per server worker (the project's welcome names it), and its sockets."""
    workers = sorted({worker for s in firsts for worker in s.get("per_worker", {})})
    return {
        worker: {
            "sockets": median(s["per_worker"].get(worker, {}).get("received") for s in firsts),
            "p50_ms": median(s["per_worker"].get(worker, {}).get("p50_ms") for s in firsts),
            "p99_ms": median(s["per_worker"].get(worker, {}).get("p99_ms") for s in firsts),
        }
        for worker in workers
    }


def compression_set_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One set of the compression stage: what it negotiated, received and cost."""
    firsts = [r["per_seq"][0] for r in entry.get("rounds", [])]
    burst = entry.get("burst") or {}
    lost = sum(r["lost"] for r in entry.get("rounds", [])) + burst.get("lost", 0)
    expected = sum(r["expected"] * len(r["seqs"]) for r in [*entry.get("rounds", []), burst] if r)
    return {
        "deflate_offered": entry["deflate_offered"],
        "opened": entry["open"]["opened"],
        "negotiated": entry["open"].get("deflate_negotiated", 0),
        "params": entry["open"].get("deflate_params", {}),
        "message_bytes": next((s["frame_bytes"] for s in firsts if s["frame_bytes"]), None),
        "frame_bytes_per_delivery": burst.get("frame_bytes_per_delivery"),
        "wire_bytes_per_delivery": burst.get("wire_bytes_per_delivery"),
        "cpu_us_per_delivery": burst.get("server_cpu_us_per_delivery"),
        "p50_ms": median(s["p50_ms"] for s in firsts),
        "p99_ms": median(s["p99_ms"] for s in firsts),
        # The load generator inflates every message: near a whole core, latency is its limit.
        "client_cpu": median(r.get("client_cpu_percent") for r in entry.get("rounds", [])),
        "lost": lost,
        "expected": expected,
    }


def compression_kind(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sets of one kind (offering deflate, or plain) together: medians over the sets."""
    params: dict[str, int] = {}
    for row in rows:
        for key, count in row["params"].items():
            params[key] = params.get(key, 0) + count
    summary = {
        field: median(row[field] for row in rows)
        for field in (
            "message_bytes",
            "frame_bytes_per_delivery",
            "wire_bytes_per_delivery",
            "cpu_us_per_delivery",
            "p50_ms",
            "p99_ms",
            "client_cpu",
        )
    }
    return {
        "sets": len(rows),
        "opened": sum(row["opened"] for row in rows),
        "negotiated": sum(row["negotiated"] for row in rows),
        "params": params,
        "lost": sum(row["lost"] for row in rows),
        "expected": sum(row["expected"] for row in rows),
        **summary,
    }


def summarize_compression(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if not entry or not entry.get("sets"):
        return None
    rows = [compression_set_row(s) for s in entry["sets"]]
    deflate = [row for row in rows if row["deflate_offered"]]
    plain = [row for row in rows if not row["deflate_offered"]]
    return {
        "sockets": entry["sockets"],
        "sets": rows,
        "deflate": compression_kind(deflate) if deflate else None,
        "plain": compression_kind(plain) if plain else None,
    }


def summarize_publish(entry: dict[str, Any]) -> dict[str, Any]:
    """A client's messages to one topic's subscribers: every delivery together, and the
    publisher's acknowledgements (the project's `published`; Node's broadcast has none)."""
    deliveries, publisher = entry.get("deliveries", {}), entry.get("publisher", {})
    messages = deliveries.get("per_message", [])
    return {
        "sockets": entry["sockets"],
        "opened": entry["open"]["opened"],
        "messages": entry["messages"],
        "rate": entry["rate"],
        "topic": entry.get("topic"),
        "warmup_messages": entry.get("warmup_messages"),
        **{
            field: deliveries.get(field)
            for field in (
                "p50_ms",
                "p99_ms",
                "max_ms",
                "received",
                "expected",
                "lost",
                "duplicates",
                "frame_bytes",
                "per_worker",
            )
        },
        "worst_message_p99_ms": max(
            (m["p99_ms"] for m in messages if m["p99_ms"] is not None), default=None
        ),
        "client_cpu": deliveries.get("client_cpu_percent"),
        "server_cpu_percent": entry.get("server_cpu_percent"),
        "seconds": entry.get("seconds"),
        **{
            field: publisher.get(field)
            for field in ("acks", "errors", "first_error", "ack_p50_ms", "ack_p99_ms", "ack_max_ms")
        },
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    echo = {f"{e['peer']}/{e['transport']}": summarize_echo_peer(e) for e in results["echo_peers"]}
    fanout = {
        f"{e['peer']}/{e['transport']}/{e['sockets']}": summarize_fanout(e)
        for e in results["fanout"]
    }
    compression = summarize_compression(results.get("compression"))
    publish = {
        f"{e['peer']}/{e['transport']}": summarize_publish(e) for e in results.get("publish", [])
    }
    return {"echo": echo, "fanout": fanout, "compression": compression, "publish": publish}


def largest_size(summary: dict[str, Any], transport: str) -> int | None:
    """The largest set held by one loadgen process (the wide set has targets of its own)."""
    sizes = [
        int(key.split("/")[2])
        for key, figures in summary["fanout"].items()
        if f"/{transport}/" in key and figures.get("client_processes", 1) == 1
    ]
    return max(sizes) if sizes else None


def wide_size(summary: dict[str, Any]) -> int | None:
    """The wide set's size: the WSS set whose sockets were spread over loadgen processes."""
    sizes = [
        int(key.split("/")[2])
        for key, figures in summary["fanout"].items()
        if "/wss/" in key and figures.get("client_processes", 1) > 1
    ]
    return max(sizes) if sizes else None


def fanout_figure(
    summary: dict[str, Any], peer: str, transport: str, size: int | None, field: str
) -> float | None:
    return summary["fanout"].get(f"{peer}/{transport}/{size}", {}).get(field)


def echo_figure(summary: dict[str, Any], peer: str, transport: str, field: str) -> float | None:
    return summary["echo"].get(f"{peer}/{transport}", {}).get(field)


def ratios(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of "the project's figure divided by the peer's" (and wss ÷ ws per peer)."""
    rows: list[dict[str, Any]] = []

    def add(measure: str, transport: str, better: str, **values: float | None) -> None:
        rows.append({"measure": measure, "transport": transport, "better": better, **values})

    for transport in ("wss", "ws"):
        for field, measure in (
            (
                "handshakes_per_s",
                "Handshakes + upgrades /s (full TLS)"
                if transport == "wss"
                else "Connections + upgrades /s",
            ),
            ("resumed_per_s", "Handshakes + upgrades /s (TLS 1.3 resumed)"),
            ("echo_per_s", "Echo messages /s"),
            ("kib_per_socket", "Memory per idle socket"),
        ):
            project = echo_figure(summary, "project-daphne", transport, field)
            if project is None:
                continue
            add(
                measure,
                transport,
                "lower" if field == "kib_per_socket" else "higher",
                bare=ratio(project, echo_figure(summary, "bare-daphne", transport, field)),
                node=ratio(project, echo_figure(summary, "node", transport, field)),
                uvicorn=ratio(echo_figure(summary, "project-uvicorn", transport, field), project),
            )
    for transport in ("wss", "ws"):
        for size in sorted({int(k.split("/")[2]) for k in summary["fanout"]}):
            for field, measure, better in (
                ("p99_ms", f"Fan-out p99 latency, {size:,} sockets", "lower"),
                ("burst_per_s", f"Fan-out deliveries /s, {size:,} sockets", "higher"),
            ):
                project = fanout_figure(summary, "project", transport, size, field)
                if project is None:
                    continue
                add(
                    measure,
                    transport,
                    better,
                    node=ratio(project, fanout_figure(summary, "node", transport, size, field)),
                    tutorial=ratio(
                        project, fanout_figure(summary, "tutorial", transport, size, field)
                    ),
                )
    publish = summary.get("publish", {})
    for transport in ("wss", "ws"):
        project, node = publish.get(f"project/{transport}"), publish.get(f"node/{transport}")
        if not project:
            continue
        for field, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            add(
                f"Client publish to delivery {label}, {project['sockets']:,} subscribers",
                transport,
                "lower",
                node=ratio(project[field], (node or {}).get(field)),
            )
    return rows


def tls_cost(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """wss ÷ ws for each peer and measure."""
    rows = []
    for field, measure in (
        ("handshakes_per_s", "Handshakes + upgrades /s"),
        ("echo_per_s", "Echo messages /s"),
        ("kib_per_socket", "Memory per idle socket"),
    ):
        row: dict[str, Any] = {"measure": measure}
        for peer in ("bare-daphne", "project-daphne", "project-uvicorn", "node"):
            row[peer] = ratio(
                echo_figure(summary, peer, "wss", field), echo_figure(summary, peer, "ws", field)
            )
        if any(value is not None for key, value in row.items() if key != "measure"):
            rows.append(row)
    sizes = sorted({int(k.split("/")[2]) for k in summary["fanout"] if "/ws/" in k})
    for size in sizes:
        for field, measure in (
            ("p99_ms", f"Fan-out p99, {size:,} sockets"),
            ("burst_per_s", f"Fan-out deliveries /s, {size:,} sockets"),
        ):
            row = {"measure": measure}
            for peer in ("project", "tutorial", "node"):
                row[f"fanout-{peer}"] = ratio(
                    fanout_figure(summary, peer, "wss", size, field),
                    fanout_figure(summary, peer, "ws", size, field),
                )
            if any(value is not None for key, value in row.items() if key != "measure"):
                rows.append(row)
    return rows


def fanout_target(figures: dict[str, Any], size: int, target: str) -> dict[str, Any]:
    """The fan-out latency target's row for one peer's figures at `size` sockets."""
    p99, lost = figures.get("p99_ms"), figures.get("lost")
    reached: bool | str | None = None
    if p99 is not None and size == 5000:
        reached = p99 < TARGET_FANOUT_P99_MS and lost == 0
        if reached and figures.get("over_target"):
            reached = "median"
    figure = (
        f"p99 {fmt_ms(p99)} ms (p50 {fmt_ms(figures.get('p50_ms'))}, max "
        f"{fmt_ms(figures.get('max_ms'))}), lost {lost} of {figures.get('expected') or 0:,}, "
        f"{size:,} sockets; {figures.get('over_target')} of {figures.get('rounds')} messages "
        f"had a p99 of 250 ms or more (worst {fmt_ms(figures.get('worst_p99_ms'))} ms)"
        if p99 is not None
        else "not measured"
    )
    return {"target": target, "figure": figure, "reached": reached}


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    size = largest_size(summary, "wss")
    project = summary["fanout"].get(f"project/wss/{size}", {})
    tutorial = summary["fanout"].get(f"tutorial/wss/{size}", {})
    rows = []

    rows.append(
        fanout_target(
            project,
            size,
            "A broadcast reaches 5,000 WSS sockets on 2 workers: p99 < 250 ms, none lost",
        )
    )
    rows.append(
        fanout_target(
            summary["fanout"].get(f"project-topic/wss/{size}", {}),
            size,
            "A topic message reaches 5,000 WSS subscribers on 2 workers: p99 < 250 ms, none lost",
        )
    )

    small = summary["fanout"].get("project/wss/100", {})
    user_ratio = ratio(project.get("user_cpu_ms"), small.get("user_cpu_ms"))
    rows.append(
        {
            "target": (
                "A message to one user costs the workers the same CPU with 5,000 sockets open "
                "as with 100 (ratio <= 1.5): work in proportion to that user's sockets"
            ),
            "figure": (
                f"{fmt_ratio(user_ratio)} ({project.get('user_cpu_ms')} vs "
                f"{small.get('user_cpu_ms')} ms of CPU per message, over both workers)"
                if user_ratio is not None
                else "not measured"
            ),
            "reached": None if user_ratio is None else user_ratio <= TARGET_USER_COST_RATIO,
        }
    )

    fanout_ratio = ratio(project.get("burst_per_s"), tutorial.get("burst_per_s"))
    rows.append(
        {
            "target": "Project fan-out throughput >= 3x the tutorial pattern's (WSS, 2 workers)",
            "figure": (
                f"{fmt_ratio(fanout_ratio)} ({fmt_int(project.get('burst_per_s'))} vs "
                f"{fmt_int(tutorial.get('burst_per_s'))} deliveries/s, {size:,} sockets)"
                if fanout_ratio is not None
                else "not measured"
            ),
            "reached": None if fanout_ratio is None else fanout_ratio >= TARGET_FANOUT_RATIO,
        }
    )

    echo_wss = ratio(
        echo_figure(summary, "project-daphne", "wss", "echo_per_s"),
        echo_figure(summary, "bare-daphne", "wss", "echo_per_s"),
    )
    echo_ws = ratio(
        echo_figure(summary, "project-daphne", "ws", "echo_per_s"),
        echo_figure(summary, "bare-daphne", "ws", "echo_per_s"),
    )
    rows.append(
        {
            "target": "Echo through the consumer >= 70% of bare ASGI echo under daphne",
            "figure": f"WSS {fmt_pct(echo_wss)}, WS {fmt_pct(echo_ws)}",
            "reached": None if echo_wss is None else echo_wss >= TARGET_ECHO_FRACTION,
        }
    )

    return [
        *rows,
        memory_target(summary),
        echo_node_target(summary),
        handshake_node_target(summary),
        wide_target(summary),
        idle_target(summary),
        *compression_targets(summary),
    ]


def memory_target(summary: dict[str, Any]) -> dict[str, Any]:
    """KiB per idle WSS socket, project / Node: every pair measured in the run must be <= 1."""
    pairs = []
    sockets = echo_figure(summary, "project-daphne", "wss", "idle_sockets")
    project = echo_figure(summary, "project-daphne", "wss", "kib_per_socket")
    node = echo_figure(summary, "node", "wss", "kib_per_socket")
    if project is not None and node:
        pairs.append((f"one process each, {sockets:,} sockets", project, node))
    for size in sorted({int(key.split("/")[2]) for key in summary["fanout"]}):
        project = fanout_figure(summary, "project", "wss", size, "kib_per_socket")
        node = fanout_figure(summary, "node", "wss", size, "kib_per_socket")
        if project is not None and node:
            pairs.append((f"fan-out (2 workers), {size:,} sockets", project, node))
    return {
        "target": "Memory per idle WSS socket: the project at most Node's (every pair measured)",
        "figure": "; ".join(
            f"{label}: {fmt_ratio(project / node)} ({project:.1f} vs {node:.1f} KiB)"
            for label, project, node in pairs
        )
        or "not measured",
        "reached": all(project / node <= TARGET_MEMORY_RATIO for _, project, node in pairs)
        if pairs
        else None,
    }


def client_bound(cpu: float | None) -> str:
    """† after a Node figure its load generator may have held down: a ratio against it is an
    upper bound."""
    return " †" if cpu is not None and cpu >= CLIENT_BOUND else ""


CLIENT_BOUND_NOTE = " († Node client-bound: the ratio is at most this)"


def echo_node_target(summary: dict[str, Any]) -> dict[str, Any]:
    project = echo_figure(summary, "project-daphne", "wss", "echo_per_s")
    node = echo_figure(summary, "node", "wss", "echo_per_s")
    value = ratio(project, node)
    bound = client_bound(echo_figure(summary, "node", "wss", "echo_client_cpu"))
    figure = f"{fmt_ratio(value)} ({fmt_int(project)} vs {fmt_int(node)} messages/s{bound})"
    return {
        "target": "Echo over WSS >= 0.5x Node's (project under daphne, one process each)",
        "figure": figure + (CLIENT_BOUND_NOTE if bound else "")
        if value is not None
        else "not measured",
        "reached": None if value is None else value >= TARGET_ECHO_NODE_RATIO,
    }


def handshake_node_target(summary: dict[str, Any]) -> dict[str, Any]:
    parts, values = [], []
    for field, label in (("handshakes_per_s", "full TLS"), ("resumed_per_s", "TLS 1.3 resumed")):
        project = echo_figure(summary, "project-daphne", "wss", field)
        node = echo_figure(summary, "node", "wss", field)
        value = ratio(project, node)
        if value is None:
            continue
        cpu = "handshake_client_cpu" if field == "handshakes_per_s" else "resumed_client_cpu"
        bound = client_bound(echo_figure(summary, "node", "wss", cpu))
        parts.append(f"{label} {fmt_ratio(value)} ({fmt_int(project)} vs {fmt_int(node)}/s{bound})")
        values.append(value)
    note = CLIENT_BOUND_NOTE if any("†" in part for part in parts) else ""
    return {
        "target": "Handshakes + upgrades over WSS, full TLS and TLS 1.3 resumed, >= 0.9x Node's",
        "figure": "; ".join(parts) + note if parts else "not measured",
        "reached": all(v >= TARGET_HANDSHAKE_NODE_RATIO for v in values) if values else None,
    }


def wide_target(summary: dict[str, Any]) -> dict[str, Any]:
    size = wide_size(summary)
    project = summary["fanout"].get(f"project/wss/{size}", {})
    node = summary["fanout"].get(f"node/wss/{size}", {})
    value = ratio(project.get("p99_ms"), node.get("p99_ms"))
    lost = project.get("lost")
    shown = f"{size or 15000:,}"
    figure = (
        f"{fmt_ratio(value)} (p99 {fmt_ms(project.get('p99_ms'))} vs "
        f"{fmt_ms(node.get('p99_ms'))} ms, p50 {fmt_ms(project.get('p50_ms'))} vs "
        f"{fmt_ms(node.get('p50_ms'))} ms); lost {lost} of {project.get('expected') or 0:,} "
        f"(Node {node.get('lost')}); {project.get('opened', 0):,} and {node.get('opened', 0):,} "
        f"sockets open, {project.get('client_processes')} client processes"
        if value is not None
        else "not measured"
    )
    return {
        "target": f"A broadcast reaches {shown} WSS sockets on 2 workers: p99 at most Node's "
        "single process, none lost",
        "figure": figure,
        "reached": None if value is None else value <= TARGET_WIDE_P99_RATIO and lost == 0,
    }


def idle_target(summary: dict[str, Any]) -> dict[str, Any]:
    idle = summary["fanout"].get("project/wss/5000", {})
    cpu = idle.get("idle_cpu_percent")
    redis_cpu = idle.get("idle_redis_cpu_percent") or 0.0
    return {
        "target": "5,000 idle WSS sockets cost < 1% of a core (project, 2 workers)",
        "figure": f"{cpu:.2f}% of a core (Redis beside it {redis_cpu:.2f}%)"
        if cpu is not None
        else "not measured",
        "reached": None if cpu is None else cpu < TARGET_IDLE_CPU,
    }


def compression_valid(compression: dict[str, Any]) -> bool:
    """Every socket that offered permessage-deflate negotiated it, and no plain one did:
    otherwise the two kinds of sets are not what they say."""
    deflate, plain = compression["deflate"], compression["plain"]
    return 0 < deflate["opened"] == deflate["negotiated"] and plain["negotiated"] == 0


def compression_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    compression = summary.get("compression")
    measured = bool(compression and compression["deflate"] and compression["plain"])
    rows = []
    for field, unit, threshold, target in (
        (
            "wire_bytes_per_delivery",
            "bytes on the wire",
            TARGET_DEFLATE_BYTES_RATIO,
            "Compressed broadcasts: bytes on the wire per delivery with permessage-deflate "
            "<= 0.5x without (project, 2 workers, WSS, ~1 KiB JSON)",
        ),
        (
            "cpu_us_per_delivery",
            "us of the servers' CPU",
            TARGET_DEFLATE_CPU_RATIO,
            "Compressed broadcasts: the servers' CPU per delivery with permessage-deflate "
            "<= 1.2x without",
        ),
    ):
        if not measured:
            rows.append({"target": target, "figure": "not measured", "reached": None})
            continue
        deflate, plain = compression["deflate"], compression["plain"]
        value = ratio(deflate[field], plain[field])
        reached: bool | str | None = None if value is None else value <= threshold
        if reached is not None and not compression_valid(compression):
            reached = "invalid"
        rows.append(
            {
                "target": target,
                "figure": f"{fmt_ratio(value)} ({fmt_bytes(deflate[field])} vs "
                f"{fmt_bytes(plain[field])} {unit} per delivery); {deflate['negotiated']:,} "
                f"of {deflate['opened']:,} sockets offering it negotiated permessage-deflate",
                "reached": reached,
            }
        )
    return rows


# --- Markdown --------------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def source_line(results: dict[str, Any]) -> str:
    source = results.get("source", {})
    start, end = source.get("start"), source.get("end")
    if not start:
        return ""
    line = (
        f"Code measured: digest `{start['digest']}` of {start['files']} files under "
        f"{', '.join(CODE_DIRS)} (newest: `{start['newest']}`, {start['newest_modified']})."
    )
    if end and end["digest"] != start["digest"]:
        line += (
            f" **The code changed during the run** (digest `{end['digest']}` at the end, "
            f"`{end['newest']}` {end['newest_modified']}): the figures mix two versions."
        )
    return line


def fmt_load(results: dict[str, Any]) -> str:
    start = results.get("load_average", {}).get("start")
    return "?" if not start else " / ".join(f"{value:.2f}" for value in start)


def fmt_int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def fmt_cpu(value: float | None, flag: bool = True) -> str:
    if value is None:
        return "-"
    if not flag:  # idle CPU: small figures, one decimal
        return f"{value:.1f}%"
    return f"{value:.0f}%{' †' if value >= CLIENT_BOUND else ''}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def reached_text(value: bool | str | None) -> str:
    return {
        True: "**reached**",
        False: "**not reached**",
        None: "not measured",
        "median": "**reached** by the median, not by every broadcast",
        "invalid": "**not reached**: invalid, not every socket offering permessage-deflate "
        "negotiated it",
    }[value]


def markdown(results: dict[str, Any]) -> str:
    summary = results.get("summary") or summarize(results)
    env = results.get("environment", {})
    machine, versions = env.get("machine", {}), env.get("versions", {})
    config = results["config"]
    lines = [
        f"Run: `{results['mode']}` mode, {results['started']}, {results.get('duration_s', '?')} s; "
        f"commit `{(env.get('git_commit') or '?')[:12]}`; load average before the run "
        f"{fmt_load(results)}.",
        source_line(results),
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"{machine.get('memory_gib')} GiB, Linux {machine.get('kernel')}. "
        f"Python {versions.get('python')} (daphne {versions.get('daphne')}, channels "
        f"{versions.get('channels')}, channels-redis {versions.get('channels-redis')}, Twisted "
        f"{versions.get('Twisted')}, uvicorn {versions.get('uvicorn')}), Node "
        f"{versions.get('node')} (ws {versions.get('ws')}), Redis {versions.get('redis_server')}.",
        "",
        "### Targets in this run",
        "",
        *table(
            ["Target", "Measured", "Result"],
            [[t["target"], t["figure"], reached_text(t["reached"])] for t in targets(summary)],
        ),
        "",
        "### The project against its peers",
        "",
        "Each cell is the project's figure divided by the peer's (project: daphne with "
        "`project.asgi` for handshakes, echo and memory; `serve --workers 2` for fan-out). "
        "Throughput rows: above 1 the project is faster. Latency and memory rows: below 1 "
        "the project is better. Last column: the project under uvicorn divided by under daphne.",
        "",
        *table(
            [
                "Measure",
                "Transport",
                "project / bare daphne",
                "project / Node",
                "project / tutorial",
                "uvicorn / daphne",
            ],
            [
                [
                    r["measure"],
                    r["transport"].upper(),
                    fmt_ratio(r.get("bare")),
                    fmt_ratio(r.get("node")),
                    fmt_ratio(r.get("tutorial")),
                    fmt_ratio(r.get("uvicorn")),
                ]
                for r in ratios(summary)
            ],
        ),
        "",
        "### What TLS costs: WSS / WS",
        "",
        *table(
            [
                "Measure",
                "bare daphne",
                "project daphne",
                "project uvicorn",
                "Node",
                "fan-out project",
                "fan-out tutorial",
                "fan-out Node",
            ],
            [
                [
                    r["measure"],
                    *(
                        fmt_ratio(r.get(k))
                        for k in (
                            "bare-daphne",
                            "project-daphne",
                            "project-uvicorn",
                            "node",
                            "fanout-project",
                            "fanout-tutorial",
                            "fanout-node",
                        )
                    ),
                ]
                for r in tls_cost(summary)
            ],
        ),
        "",
        *absolute_tables(summary, config),
        *compression_lines(summary.get("compression"), config),
        *publish_lines(summary.get("publish"), config),
    ]
    if results.get("errors"):
        lines += ["", "Failed measurements (details in the JSON file):"]
        lines += [f"- {error.splitlines()[0]}" for error in results["errors"]]
    return "\n".join(lines) + "\n"


def absolute_tables(summary: dict[str, Any], config: dict[str, Any]) -> list[str]:
    echo_rows = []
    for key, s in summary["echo"].items():
        peer, transport = key.split("/")
        resumed = (
            f"{fmt_int(s['resumed_per_s'])} ({fmt_pct(s['resumed_fraction'])} resumed)"
            if s["resumed_per_s"] is not None
            else "-"
        )
        echo_rows.append(
            [
                peer,
                transport.upper(),
                f"{fmt_int(s['handshakes_per_s'])} ({fmt_cpu(s['handshake_client_cpu'])})",
                resumed,
                f"{fmt_int(s['echo_per_s'])} ({fmt_cpu(s['echo_client_cpu'])})",
                "-" if s["kib_per_socket"] is None else f"{s['kib_per_socket']:.1f}",
                fmt_cpu(s["idle_cpu_percent"], flag=False),
            ]
        )
    fanout_rows = []
    for key, s in sorted(
        summary["fanout"].items(),
        key=lambda kv: (kv[0].split("/")[1], int(kv[0].split("/")[2]), kv[0].split("/")[0]),
    ):
        peer, transport, size = key.split("/")
        fanout_rows.append(
            [
                peer,
                transport.upper(),
                f"{int(size):,}",
                fmt_ms(s["p50_ms"]),
                fmt_ms(s["p99_ms"]),
                fmt_ms(s["max_ms"]),
                f"{s['lost']} of {s['expected']:,}",
                "-"
                if s["burst_per_s"] is None
                else f"{fmt_int(s['burst_per_s'])} (lost {s['burst_lost']})",
                fmt_int(s["open_per_s"]),
                "-" if s["kib_per_socket"] is None else f"{s['kib_per_socket']:.1f}",
                fmt_cpu(s["idle_cpu_percent"], flag=False),
                "-" if s["frame_bytes"] is None else str(s["frame_bytes"]),
            ]
        )
    return [
        "### Absolute figures (this machine only; compare the ratios above)",
        "",
        f"Handshakes, echo and idle: each server one process pinned to CPU 0 (all the peers "
        "of a transport up at once, measured in turn round after round), the load generators "
        f"on CPU 1; medians of {config['rounds']} rounds of "
        f"{config['handshake_seconds']:g} s (handshakes: {config['handshake_processes']} "
        "client processes, one handshake in flight each) and "
        f"{config['echo_seconds']:g} s (echo: {config['echo_connections']} sockets, "
        'one 15-byte text message in flight on each, answered by 15 bytes: `{"type":"ping"}` '
        'echoed, or the project\'s `{"type":"pong"}`). In brackets: the load generator\'s '
        f"CPU; † marks {CLIENT_BOUND:.0f}% of a core or more, where the client may be the "
        f"limit, so the server's real figure is at least that. Memory: RSS growth with "
        f"{config['idle_sockets']:,} idle sockets opened on a fresh server, divided by their "
        "number; "
        + (
            f"idle CPU over {config['echo_idle_seconds']:g} s."
            if config.get("echo_idle_seconds")
            else "idle CPU not measured in this mode (see fan-out below)."
        ),
        "",
        *table(
            [
                "Peer",
                "Transport",
                "Handshakes /s (client CPU)",
                "Resumed /s",
                "Echo msg/s (client CPU)",
                "KiB per idle socket",
                "Idle CPU (% of a core)",
            ],
            echo_rows,
        ),
        "",
        f"Fan-out: one broadcast at a time, latency from just before the send call to arrival, "
        f"median of {config['fanout_rounds']} broadcasts (lost: all of them together). "
        f"Deliveries/s: bursts of {config['burst']} broadcasts sent back to back, messages "
        f"received divided by the time from the first send to the last arrival, median of "
        f"{config['burst_rounds']} bursts. Not pinned. KiB per socket and idle CPU (over "
        f"{config['idle_seconds']:g} s, all server processes, Redis not included) on the "
        "largest set, opened on a fresh server." + wide_note(summary, config),
        "",
        *table(
            [
                "Peer",
                "Transport",
                "Sockets",
                "p50 ms",
                "p99 ms",
                "max ms",
                "Lost",
                "Deliveries/s (burst)",
                "Opened /s",
                "KiB per socket",
                "Idle CPU",
                "Frame bytes",
            ],
            fanout_rows,
        ),
        *worker_lines(summary),
    ]


def wide_note(summary: dict[str, Any], config: dict[str, Any]) -> str:
    size = wide_size(summary)
    if size is None:
        return ""
    processes = max(s["client_processes"] for s in summary["fanout"].values())
    return (
        f" The {size:,} set (the project and Node, WSS only, each on a fresh server): its "
        f"sockets held by {processes} load-generator processes, every latency of each "
        f"broadcast merged across them; median of {config.get('wide_rounds')} broadcasts."
    )


def compression_lines(compression: dict[str, Any] | None, config: dict[str, Any]) -> list[str]:
    """The compression stage's sets, one row each, and deflate / plain."""
    if not compression:
        return []
    rows = [
        [
            str(index),
            "permessage-deflate" if row["deflate_offered"] else "none",
            fmt_int(row["opened"]),
            fmt_int(row["negotiated"]),
            fmt_int(row["message_bytes"]),
            fmt_bytes(row["frame_bytes_per_delivery"]),
            fmt_bytes(row["wire_bytes_per_delivery"]),
            "-" if row["cpu_us_per_delivery"] is None else f"{row['cpu_us_per_delivery']:.1f}",
            fmt_ms(row["p50_ms"]),
            fmt_ms(row["p99_ms"]),
            fmt_cpu(row["client_cpu"]),
            f"{row['lost']} of {row['expected']:,}",
        ]
        for index, row in enumerate(compression["sets"], 1)
    ]
    lines = [
        "",
        "### Compressed broadcasts (permessage-deflate)",
        "",
        f"The project (`serve --workers 2`, WSS), {compression['sockets']:,} sockets per set "
        "subscribed to a topic, sent a JSON document of about 1 KiB (order records) with "
        "`realtime.topics.send()`; sets whose sockets offer permessage-deflate (the Node `ws` "
        "client's offer) and plain sets alternate on the same running server. Per set: "
        f"latency, the median of {config.get('fanout_rounds')} single broadcasts; bytes and CPU "
        f"over a burst of {config.get('compression_burst')} broadcasts sent back to back, "
        "divided by the deliveries. Frame bytes: the WebSocket frames as received (after TLS "
        "decryption, before inflating); wire bytes: the TCP payload, TLS records included. "
        "Server CPU: both workers and their supervisor, the idle rate of the 2 s before the "
        "burst taken off. Message bytes: the text as the application gets it (inflated). "
        f"Client CPU: the one load-generator process's during the single broadcasts; † marks "
        f"{CLIENT_BOUND:.0f}% of a core or more, where its inflating, not the server, may set "
        "the latency.",
        "",
        *table(
            [
                "Set",
                "Offered",
                "Sockets",
                "Negotiated",
                "Message bytes",
                "Frame bytes / delivery",
                "Wire bytes / delivery",
                "Server CPU us / delivery",
                "p50 ms",
                "p99 ms",
                "Client CPU",
                "Lost",
            ],
            rows,
        ),
    ]
    return lines + compression_summary_lines(compression)


def compression_summary_lines(compression: dict[str, Any]) -> list[str]:
    deflate, plain = compression["deflate"], compression["plain"]
    if not deflate or not plain:
        return []
    parts = [
        f"{label} {fmt_ratio(ratio(deflate[field], plain[field]))}"
        for field, label in (
            ("wire_bytes_per_delivery", "wire bytes"),
            ("frame_bytes_per_delivery", "frame bytes"),
            ("cpu_us_per_delivery", "server CPU"),
            ("p50_ms", "p50"),
            ("p99_ms", "p99"),
        )
    ]
    params = "; ".join(
        f"`{key or '(no parameters)'}` on {count:,}" for key, count in deflate["params"].items()
    )
    return [
        "",
        f"Offering permessage-deflate / plain (medians of {deflate['sets']} and {plain['sets']} "
        f"sets): {', '.join(parts)}. Negotiated by {deflate['negotiated']:,} of "
        f"{deflate['opened']:,} sockets offering it" + (f" ({params})." if params else "."),
    ]


def publish_lines(publish: dict[str, Any] | None, config: dict[str, Any]) -> list[str]:
    """The publish stage: a client's messages to one topic's subscribers, project and Node."""
    if not publish:
        return []
    rows = []
    for key, s in publish.items():
        peer, transport = key.split("/")
        ack = (
            f"{fmt_ms(s['ack_p50_ms'])} / {fmt_ms(s['ack_p99_ms'])} ({s['acks']:,} acks, "
            f"{s['errors']} errors)"
            if s.get("acks") is not None
            else "- (no answer)"
        )
        rows.append(
            [
                peer,
                transport.upper(),
                f"{s['opened']:,}",
                f"{s['messages']:,} at {s['rate']}/s",
                fmt_ms(s["p50_ms"]),
                fmt_ms(s["p99_ms"]),
                fmt_ms(s["max_ms"]),
                fmt_ms(s["worst_message_p99_ms"]),
                f"{s['lost']} of {s['expected'] or 0:,}",
                ack,
                fmt_cpu(s["server_cpu_percent"], flag=False),
                fmt_cpu(s["client_cpu"]),
                "-" if s["frame_bytes"] is None else str(s["frame_bytes"]),
            ]
        )
    first = next(iter(publish.values()))
    topic = next((s["topic"] for s in publish.values() if s.get("topic")), "?")
    lines = [
        "",
        f"### A client's publish to {first['sockets']:,} subscribers of one topic",
        "",
        "One socket publishes messages at a steady rate, its clock's time in each (taken just "
        "before the send); every subscriber subtracts it from its arrival time (same machine "
        "clock). p50, p99 and max over every delivery of every message together; worst "
        "message: the highest of the messages' own p99. The project: `serve --workers 2`, the "
        f"subscribers (anonymous) subscribed to the example project's topic `{topic}`, the "
        "publisher a signed-in user sending `publish` (its `publish` function, the message "
        "stored with its receipt, then sent to both workers), and the publish -> `published` "
        "acknowledgement. Node: the same text sent on the `/broadcast` path of the seed's "
        "server, which sends it on to every other socket (the `ws` README's client broadcast; "
        "no answer to the sender). "
        + (
            f"The first {first['warmup_messages']} messages (a warm-up) are not counted. "
            if first.get("warmup_messages")
            else ""
        )
        + "Server CPU: all its processes from the publisher's "
        "start to the last arrival, in % of one core. Client CPU: the subscribers' one "
        "load-generator process.",
        "",
        *table(
            [
                "Peer",
                "Transport",
                "Subscribers",
                "Messages",
                "p50 ms",
                "p99 ms",
                "max ms",
                "Worst message p99 ms",
                "Lost",
                "Publish -> ack p50 / p99 ms",
                "Server CPU",
                "Client CPU",
                "Frame bytes",
            ],
            rows,
        ),
    ]
    project, node = publish.get("project/wss"), publish.get("node/wss")
    if project and node:
        lines += [
            "",
            f"Project / Node: p50 {fmt_ratio(ratio(project['p50_ms'], node['p50_ms']))}, p99 "
            f"{fmt_ratio(ratio(project['p99_ms'], node['p99_ms']))}.",
        ]
    if project and project.get("per_worker"):
        parts = [
            f"{worker} {fmt_int(w['received'])} deliveries, p50 {fmt_ms(w['p50_ms'])} / "
            f"p99 {fmt_ms(w['p99_ms'])} ms"
            for worker, w in sorted(project["per_worker"].items())
        ]
        lines += ["", "The project's deliveries per worker: " + "; ".join(parts) + "."]
    if project and project.get("first_error"):
        lines += ["", f"The project's first refused publish: `{project['first_error']}`"]
    return lines


def worker_lines(summary: dict[str, Any]) -> list[str]:
    """The project's fan-out per worker: an uneven spread or one slow worker shows here."""
    lines = []
    for key, s in summary["fanout"].items():
        peer, transport, size = key.split("/")
        if peer != "project" or not s.get("per_worker"):
            continue
        parts = [
            f"{worker} {fmt_int(w['sockets'])} sockets, p50 {fmt_ms(w['p50_ms'])} / "
            f"p99 {fmt_ms(w['p99_ms'])} ms"
            for worker, w in s["per_worker"].items()
        ]
        lines.append(f"- {transport.upper()} {int(size):,}: " + "; ".join(parts))
    if not lines:
        return []
    return ["", "The project's fan-out per worker (median of the broadcasts):", "", *lines]


# --- chart -----------------------------------------------------------------------------------


def chart(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = {
        "project": ("tab:blue", "project (serve, 2 workers)"),
        "project-topic": ("tab:purple", "project, a topic's subscribers"),
        "tutorial": ("tab:red", "tutorial pattern (2 daphne workers)"),
        "node": ("tab:green", "Node https + ws (1 process)"),
    }
    figure, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharey=True)
    for axis, transport in zip(axes, ("wss", "ws"), strict=True):
        all_sizes: set[int] = set()
        for peer, (color, name) in peers.items():
            points = sorted(
                (int(key.split("/")[2]), s)
                for key, s in summary["fanout"].items()
                if key.startswith(f"{peer}/{transport}/")
            )
            if not points:
                continue
            sizes = [size for size, _ in points]
            all_sizes.update(sizes)
            for field, style, label in (("p50_ms", "o-", "p50"), ("p99_ms", "^--", "p99")):
                values = [s[field] for _, s in points]
                axis.plot(sizes, values, style, color=color, label=f"{name} {label}")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(sorted(all_sizes), [f"{size:,}" for size in sorted(all_sizes)])
        axis.minorticks_off()
        axis.set_title(f"Broadcast fan-out over {transport.upper()}")
        axis.set_xlabel("connected sockets")
        axis.grid(True, which="major", alpha=0.3)
        axis.axhline(TARGET_FANOUT_P99_MS, color="grey", linewidth=0.8, linestyle=":")
        axis.annotate(
            "target p99 250 ms",
            (0.02, TARGET_FANOUT_P99_MS),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            color="grey",
            va="bottom",
        )
    axes[0].set_ylabel("delivery latency (ms)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=90)
    plt.close(figure)


# --- output ----------------------------------------------------------------------------------


def to_json(value: Any, depth: int = 0, flat_from: int = 4) -> str:
    """Indented JSON whose deeper levels (a broadcast's figures, a worker's) stay on one line:
    readable, diffable, and much smaller than json.dumps(indent=1)'s size."""
    if depth >= flat_from or not isinstance(value, dict | list) or not value:
        return json.dumps(value, ensure_ascii=False)
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict):
        items = [
            f"{inner}{json.dumps(k)}: {to_json(v, depth + 1, flat_from)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{inner}{to_json(v, depth + 1, flat_from)}" for v in value]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def output_paths(out: Path, stem: str) -> tuple[Path, Path, Path]:
    """STEM.json, STEM.md and its chart: fanout.png for "latest", fanout-STEM.png otherwise."""
    png = "fanout.png" if stem == "latest" else f"fanout-{stem}.png"
    return out / f"{stem}.json", out / f"{stem}.md", out / png


def render(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """Add the summary, ratios and targets to `results` and write its three files."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    results["summary"] = summary
    results["ratios"] = ratios(summary)
    results["tls_cost"] = tls_cost(summary)
    results["targets"] = targets(summary)
    json_path, md_path, png_path = output_paths(out, stem)
    json_path.write_text(to_json(results) + "\n")
    md_path.write_text(markdown(results))
    chart(summary, png_path, f"{results['mode']} run, {results['started']} (2 workers)")
    return [json_path, md_path, png_path]


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """latest.json, latest.md and fanout.png, and copies named after the mode (quick.json,
    quick.md, fanout-quick.png), so that a quick run does not hide the last full one."""
    written = render(results, out, "latest")
    for path, copy in zip(written, output_paths(out, results["mode"]), strict=True):
        shutil.copyfile(path, copy)
    return written


def update_doc(markdown_text: str, doc: Path = DOC) -> None:
    text = doc.read_text()
    if DOC_START not in text or DOC_END not in text:
        sys.exit(f"{doc} has no {DOC_START} ... {DOC_END} section")
    head, rest = text.split(DOC_START, 1)
    _, tail = rest.split(DOC_END, 1)
    doc.write_text(f"{head}{DOC_START}\n\n{markdown_text}\n{DOC_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    results = json.loads(args.source.read_text())
    render(results, args.source.parent, args.source.stem)
    if args.update_docs:
        update_doc(markdown(results))
        print(f"updated {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
