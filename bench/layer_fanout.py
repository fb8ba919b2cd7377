"""Broadcast fan-out through the two channels-redis layers, side by side in one run.

For each layer (RedisChannelLayer, "core", and RedisPubSubChannelLayer, "pubsub"): start a
private redis-server and `manage.py serve --workers 2` on free ports, open N WSS sockets
(verified against a throw-away dev CA), send R broadcasts the way realtime.broadcast publishes
them (one group_send of pre-serialized text with its offset) and time their arrival at every
socket.

    .venv/bin/python bench/layer_fanout.py [--sockets 1000] [--rounds 5] [--shards 1]

With --shards N, N private redis-servers are the layer's shards (REDIS_URL lists them all);
the Redis commands are counted on every shard.

Prints a Markdown table and writes bench/results/layer_fanout.json. Latency is measured from
just before group_send to arrival at each client, all on this machine (client included: the
client's own CPU use is part of the figures, equally for both layers). The comparison with
other servers, with a Node client fast enough for 5,000 sockets, is bench/run.py
(`make bench`, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")

import django  # noqa: E402
import redis  # noqa: E402

django.setup()

from channels_redis.core import RedisChannelLayer  # noqa: E402
from channels_redis.pubsub import RedisPubSubChannelLayer  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from realtime.messaging.streams import BROADCASTS, TOPIC_EVENT, TOPICS_GROUP  # noqa: E402
from realtime.tls.devca import ensure_dev_certificate  # noqa: E402
from tests.helpers import free_port, redis_args, wait_for_port  # noqa: E402

LAYERS = {"core": RedisChannelLayer, "pubsub": RedisPubSubChannelLayer}
PYTHON = sys.executable
CONNECT_BATCH = 50  # concurrent handshakes: more only measures handshake queueing


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Clients:
    """N WSS sockets that record when each broadcast sequence number arrives."""

    def __init__(self, url: str, tls: ssl.SSLContext, origin: str) -> None:
        self.url, self.tls, self.origin = url, tls, origin
        self.sockets: list = []
        self.workers: list[str] = []
        self.arrivals: dict[int, list[float]] = {}
        self.tasks: list[asyncio.Task] = []

    async def open(self, count: int) -> None:
        for start in range(0, count, CONNECT_BATCH):
            batch = min(CONNECT_BATCH, count - start)
            await asyncio.gather(*(self._open_one() for _ in range(batch)))

    async def _open_one(self) -> None:
        socket_ = await connect(
            self.url, ssl=self.tls, origin=self.origin, open_timeout=60, max_queue=None
        )
        welcome = json.loads(await socket_.recv())
        self.sockets.append(socket_)
        self.workers.append(welcome["worker"])
        self.tasks.append(asyncio.create_task(self._listen(socket_)))

    async def _listen(self, socket_) -> None:
        async for text in socket_:
            arrived = time.perf_counter()
            message = json.loads(text)
            if message.get("type") == "bench":
                self.arrivals.setdefault(message["seq"], []).append(arrived)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(s.close() for s in self.sockets), return_exceptions=True)


def redis_calls(redis_urls: str) -> dict[str, int]:
    """Redis's own count of commands served, by command (INFO commandstats), and its bytes,
    summed over the shards of a comma-separated REDIS_URL."""
    calls: dict[str, int] = {}
    for url in redis_urls.split(","):
        client = redis.Redis.from_url(url)
        stats = client.info("commandstats")
        network = client.info("stats")
        client.close()
        counts = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
        counts["bytes_in"] = network["total_net_input_bytes"]
        counts["bytes_out"] = network["total_net_output_bytes"]
        for name, count in counts.items():
            calls[name] = calls.get(name, 0) + count
    return calls


def calls_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {name: after[name] - before.get(name, 0) for name in after}
    return {name: count for name, count in sorted(delta.items()) if count}


async def measure_layer(name: str, port: int, redis_url: str, tls, sockets: int, rounds: int):
    hosts = [{"address": url, "socket_timeout": None} for url in redis_url.split(",")]
    layer = LAYERS[name](hosts=hosts)
    clients = Clients(f"wss://localhost:{port}/ws/", tls, f"https://localhost:{port}")
    opened = time.perf_counter()
    await clients.open(sockets)
    open_seconds = time.perf_counter() - opened
    await asyncio.sleep(1)
    results = []
    calls_before = redis_calls(redis_url)
    for seq in range(rounds):
        text = json.dumps({"type": "bench", "seq": seq, "message": "x" * 100})
        sent = time.perf_counter()
        # What a publish sends: a fresh server's broadcast stream starts at offset 0, so the
        # rounds are its offsets 1, 2, ... in order (no database read by the workers).
        event = {"type": TOPIC_EVENT, "topic": BROADCASTS, "offset": seq + 1, "text": text}
        await layer.group_send(TOPICS_GROUP, {**event, "audience": "everyone"})
        deadline = sent + 15
        while len(clients.arrivals.get(seq, [])) < sockets and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # late arrivals still count; duplicates would show here
        latencies = [(t - sent) * 1000 for t in clients.arrivals.get(seq, [])]
        results.append(
            {
                "received": len(latencies),
                "lost": max(sockets - len(latencies), 0),
                "p50_ms": percentile(latencies, 0.5) if latencies else None,
                "p99_ms": percentile(latencies, 0.99) if latencies else None,
                "max_ms": max(latencies) if latencies else None,
            }
        )
        await asyncio.sleep(0.5)
    # Includes the idle polling of the rounds' pauses (the core layer's blocking pops).
    redis_per_round = {
        command: round(count / rounds, 1)
        for command, count in calls_between(calls_before, redis_calls(redis_url)).items()
    }
    spread = {worker: clients.workers.count(worker) for worker in sorted(set(clients.workers))}
    await clients.close()
    await layer.flush()
    return {
        "layer": name,
        "open_s": open_seconds,
        "workers": spread,
        "redis_commands_per_broadcast": redis_per_round,
        "rounds": results,
    }


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        redis_args(port, workdir),
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port, process, 10)
    return process, f"redis://127.0.0.1:{port}/0"


def server_env(state: Path, certs: Path, redis_url: str, layer: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DJANGO_SECRET_KEY="bench-only-secret-key-" + "z" * 40,
        DJANGO_DB_PATH=str(state / "db.sqlite3"),
        DJANGO_STATIC_ROOT=str(state / "static"),
        REALTIME_CERT_DIR=str(certs),
        REDIS_URL=redis_url,
        REDIS_CHANNEL_LAYER=layer,
        # Every socket comes from 127.0.0.1: the per-address cap would refuse the load.
        REALTIME_WS_MAX_PER_CLIENT="0",
        REALTIME_MAX_CONNECTIONS_PER_ADDRESS="0",
    )
    return env


def run_one(
    name: str, state: Path, certs: Path, tls, sockets: int, rounds: int, shards: int = 1
) -> dict:
    started = [start_redis(state) for _ in range(shards)]
    redis_url = ",".join(url for _, url in started)
    env = server_env(state, certs, redis_url, name)
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, server, 60)
        time.sleep(2)  # both workers ready (serve listens at once; early handshakes would wait)
        return asyncio.run(measure_layer(name, port, redis_url, tls, sockets, rounds))
    finally:
        server.terminate()
        server.wait(timeout=30)
        for redis_process, _ in started:
            redis_process.terminate()
            redis_process.wait(timeout=10)


def summarize(result: dict) -> dict:
    rounds = [r for r in result["rounds"] if r["p99_ms"] is not None]
    return {
        "layer": result["layer"],
        "workers": result["workers"],
        "p50_ms": statistics.median(r["p50_ms"] for r in rounds) if rounds else None,
        "p99_ms": statistics.median(r["p99_ms"] for r in rounds) if rounds else None,
        "max_ms": max(r["max_ms"] for r in rounds) if rounds else None,
        "lost": sum(r["lost"] for r in result["rounds"]),
        "messages": len(result["rounds"]) * sum(result["workers"].values()),
        "redis_commands_per_broadcast": result["redis_commands_per_broadcast"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", nargs="+", default=["core", "pubsub"], choices=LAYERS)
    parser.add_argument("--shards", type=int, default=1, help="Redis servers (default 1)")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        certs = ensure_dev_certificate(state / "certs").paths
        tls = ssl.create_default_context(cafile=str(certs.ca_cert))
        results = [
            run_one(name, state, certs.cert.parent, tls, args.sockets, args.rounds, args.shards)
            for name in args.layers
        ]
    summary = [summarize(r) for r in results]
    print(
        f"\nBroadcast to {args.sockets} WSS sockets on 2 workers, {args.rounds} rounds each, "
        f"{args.shards} Redis shard(s)\n"
    )
    print("| Layer | Sockets per worker | p50 (ms) | p99 (ms) | max (ms) | Lost |")
    print("|---|---|---|---|---|---|")
    for row in summary:
        print(
            f"| {row['layer']} | {row['workers']} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} "
            f"| {row['max_ms']:.0f} | {row['lost']} of {row['messages']} |"
        )
    print("\nRedis commands per broadcast (INFO commandstats, the rounds' pauses included):")
    for row in summary:
        print(f"- {row['layer']}: {row['redis_commands_per_broadcast']}")
    out = ROOT / "bench" / "results" / "layer_fanout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    out.write_text(json.dumps({"machine": machine, "summary": summary, "raw": results}, indent=2))
    print(f"\nWritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
