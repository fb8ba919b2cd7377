"""The benchmark harness behind `make bench`: the project against its peers, on loopback.

    .venv/bin/python -m bench.run [--mode quick|full]
                                  [--stages echo fanout wide-fanout compression publish]
                                  [--peers NAME ...] [--transports wss ws]
                                  [--fanout-sizes N ...] [--wide-sockets N]
                                  [--wide-processes N] [--compression-sockets N]
                                  [--publish-sockets N] [--publish-messages N]

Measures, over WSS and over plain WS (docs/benchmarks.md says what each figure means):

- handshakes: new TCP + TLS + WebSocket upgrade + close per second, full TLS handshakes and
  TLS 1.3 resumption; echo: request/reply messages per second through each server; idle:
  memory per open socket and CPU of idle sockets. Peers: a bare ASGI echo app under daphne,
  the project under daphne and under uvicorn, and the seed article's Node https + ws server.
  The servers run on CPU 0, the load generator on CPU 1; all the peers of a transport are up
  at once and each round measures them in turn, so that unrelated load hits them alike.
- fan-out: one broadcast to 100, 1,000 and 5,000 sockets (p50, p99, max latency, lost) and
  bursts of broadcasts (deliveries per second). Peers: the project (`serve --workers 2`), the
  same with its sockets subscribed to a topic and sent topic messages (project-topic), the
  Channels tutorial's pattern on 2 daphne workers, and the Node server. Not pinned: two
  workers, Redis and the client share the two cores.
- wide-fanout: the same at 15,000 WSS sockets, the project and Node only, the sockets spread
  over 3 load-generator processes (bench/merge.py merges their latencies).
- compression: the project's broadcasts of a ~1 KiB JSON document to sockets that offer
  permessage-deflate and, alternating on the same server, to sockets that do not: bytes
  received and the servers' CPU per delivery, latency, and how many sockets negotiated it.
- publish: a client's message to 1,000 subscribers of one topic. One signed-in socket publishes
  to a topic of the example project (20 a second) on `serve --workers 2`; the same shape
  through the Node server, whose `/broadcast` path sends what a client sends to every other
  socket. Latency from the client's send to each subscriber (p50, p99 over every delivery),
  and the project's publish -> `published` acknowledgement.

The size options replace the mode's, for working on a stage with fewer sockets. Every figure
is the median of several rounds. Writes bench/results/latest.json, latest.md and
fanout.png (and copies named after the mode). Every process it starts is stopped at the end,
on Ctrl-C and on errors too. Load goes to 127.0.0.1 only; certificates are verified against a
throw-away dev CA made for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench import merge, procs, report  # noqa: E402
from bench.clients import (  # noqa: E402
    FanoutClients,
    FanoutGroup,
    Trigger,
    loadgen_args,
    run_loadgen,
)
from bench.servers import (  # noqa: E402
    ECHO_PEERS,
    FANOUT_PEERS,
    PING,
    TRANSPORTS,
    Peer,
    Setup,
    echo_peer,
    fanout_peer,
)
from realtime.tls.devca import ensure_dev_certificate  # noqa: E402
from realtime.wire import PROTOCOL_VERSION  # noqa: E402
from tests.helpers import redis_args  # noqa: E402

SERVER_CPU = "0"  # one core for the server under test (echo, handshakes) ...
LOADGEN_CPU = "1"  # ... the other for the load generator
SETTLE_SECONDS = 3.0  # after opening sockets: handshakes, presence writes and GC settle
OPEN_CONCURRENCY = 100  # handshakes in flight while opening fan-out sockets
EXPECT_TIMEOUT = 10.0  # seconds for a broadcast to reach every socket before it counts as lost
STAGES = ["echo", "fanout", "wide-fanout", "compression", "publish"]
USER_MESSAGES = 200  # messages to a user with no socket, per set of sockets (the project's)
WIDE_PEERS = ["project", "node"]  # at 15,000 sockets the tutorial's pattern would take minutes
FD_MARGIN = 200  # descriptors a loadgen process needs beside its sockets
IDLE_BEFORE_BURST = 2.0  # seconds: the servers' idle CPU rate, read just before a burst
PUBLISH_PEERS = ["project", "node"]
# project/demo/topics.py: anyone may read the wall and pin a note (a text of 1-280 characters).
PUBLISH_TOPIC = "wall"
PUBLISH_RATE = 20  # messages a second from the one publishing socket
PUBLISH_WARMUP = 5  # messages published first and not counted: the topic's first rows, threads
PUBLISHER = "bench-publisher"  # the signed-in user who publishes (the project's)
# Above PUBLISH_RATE, so that the bench's one publisher, standing in for a room of people, is
# never refused; the defaults (5 a second per topic, 10 over all topics) are one person's.
PUBLISH_ENV = {
    "REALTIME_TOPIC_PUBLISH_RATE": "100",
    "REALTIME_TOPIC_PUBLISH_BURST": "100",
    "REALTIME_PUBLISHER_RATE": "100",
    "REALTIME_PUBLISHER_BURST": "100",
}


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int  # handshake and echo rounds
    handshake_seconds: float
    echo_seconds: float
    echo_connections: int
    handshake_processes: int  # client processes, each with one handshake in flight
    warmup_seconds: float  # before each handshake and echo round's clock starts
    idle_sockets: int  # opened on a fresh echo peer: memory per socket ...
    idle_transports: tuple[str, ...]
    echo_idle_seconds: float | None  # ... and the CPU of those idle sockets (None: not measured)
    fanout_sizes: dict[str, list[int]]  # per transport, largest first (fresh server)
    fanout_rounds: int
    burst: int  # broadcasts sent back to back for deliveries per second
    burst_rounds: int
    idle_seconds: float  # idle CPU window on fan-out peers (daphne pings every socket each 20 s)
    wide_sockets: int  # the wide fan-out set (project and Node, WSS, fresh server) ...
    wide_processes: int  # ... spread over this many loadgen processes
    wide_rounds: int  # single broadcasts to it (bursts: as for the other sets)
    compression_sockets: int  # per set of the compression stage ...
    compression_sets: int  # ... sets of each kind, alternating (deflate offered, plain, ...)
    compression_burst: int  # broadcasts per set sent back to back: bytes and CPU per delivery
    publish_sockets: int  # subscribers of the one topic a client publishes to ...
    publish_messages: int  # ... the messages it publishes, PUBLISH_RATE a second


MODES = {
    "quick": Mode(
        name="quick",
        rounds=3,
        handshake_seconds=1.5,
        echo_seconds=1.5,
        echo_connections=50,
        handshake_processes=8,
        warmup_seconds=0.3,
        idle_sockets=1000,
        idle_transports=("wss",),
        echo_idle_seconds=None,
        fanout_sizes={"wss": [5000, 1000, 100], "ws": [1000, 100]},
        fanout_rounds=3,
        burst=5,
        burst_rounds=3,
        idle_seconds=6,
        wide_sockets=15000,
        wide_processes=3,
        wide_rounds=3,
        compression_sockets=1000,
        compression_sets=2,
        compression_burst=10,
        publish_sockets=1000,
        publish_messages=200,
    ),
    "full": Mode(
        name="full",
        rounds=5,
        handshake_seconds=3,
        echo_seconds=4,
        echo_connections=50,
        handshake_processes=8,
        warmup_seconds=0.5,
        idle_sockets=5000,
        idle_transports=("wss", "ws"),
        echo_idle_seconds=10,
        fanout_sizes={"wss": [5000, 1000, 100], "ws": [5000, 1000, 100]},
        fanout_rounds=5,
        burst=10,
        burst_rounds=3,
        idle_seconds=20,
        wide_sockets=15000,
        wide_processes=3,
        wide_rounds=3,
        compression_sockets=2000,
        compression_sets=3,
        compression_burst=20,
        publish_sockets=1000,
        publish_messages=600,
    ),
}


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- set-up ----------------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    prefixes = ("DJANGO_", "REDIS_", "REALTIME_", "TUTORIAL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def check_tools() -> None:
    missing = [tool for tool in ("node", "redis-server", "taskset") if not shutil.which(tool)]
    if missing:
        sys.exit(f"missing on PATH: {', '.join(missing)}")
    if not (ROOT / "bench" / "node" / "node_modules" / "ws").is_dir():
        sys.exit("bench/node/node_modules is missing: run `make bench` (it runs npm ci there)")


def start_redis(work: Path, env: dict[str, str]) -> tuple[procs.Server, str]:
    """A private redis-server on a free port (the shared one on 6379 is never touched)."""
    port = procs.free_port()
    args = [
        *redis_args(port, work),
        "--maxclients",
        "20000",
    ]
    server = procs.Server("redis", args, env, [port], work / "logs" / "redis.log")
    return server.start(), f"redis://127.0.0.1:{port}"


def prepare(work: Path) -> tuple[Setup, procs.Server]:
    logs = work / "logs"
    logs.mkdir()
    env = base_env()
    certs = ensure_dev_certificate(work / "certs").paths
    redis_server, redis_url = start_redis(work, env)
    template = work / "template.sqlite3"
    migrate_env = {
        **env,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DEBUG": "1",
        "DJANGO_DB_PATH": str(template),
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=migrate_env,
        check=True,
        capture_output=True,
    )
    return Setup(work, logs, certs, redis_url, env, template), redis_server


def flush_redis(setup: Setup) -> None:
    client = redis.Redis.from_url(setup.redis_url)
    client.flushall()
    client.close()


def ca_for(setup: Setup, transport: str) -> Path | None:
    return setup.certs.ca_cert if transport == "wss" else None


# --- measurements ----------------------------------------------------------------------------


def handshake_round(setup: Setup, peer: Peer, mode: Mode, resume: bool) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "bench.handshakes",
        "--url",
        peer.urls[0],
        "--origin",
        peer.origin,
        "--processes",
        str(mode.handshake_processes),
        "--duration",
        str(mode.handshake_seconds),
        "--warmup",
        str(mode.warmup_seconds),
    ]
    if peer.transport == "wss":
        args += ["--ca", str(setup.certs.ca_cert)]
    if resume:
        args.append("--resume")
    log = setup.logs / f"handshakes-{peer.name}-{peer.transport}.log"
    return run_loadgen(args, setup.base_env, log, LOADGEN_CPU, mode.handshake_seconds + 90)


def echo_round(setup: Setup, peer: Peer, mode: Mode) -> dict[str, Any]:
    args = loadgen_args(
        "echo",
        peer.urls[0],
        peer.origin,
        ca_for(setup, peer.transport),
        connections=mode.echo_connections,
        duration=mode.echo_seconds,
        warmup=mode.warmup_seconds,
        message=PING,
        reply=peer.echo_reply,
    )
    log = setup.logs / f"loadgen-echo-{peer.name}-{peer.transport}.log"
    return run_loadgen(args, setup.base_env, log, LOADGEN_CPU, mode.echo_seconds + 60)


def open_sockets(
    setup: Setup,
    peer: Peer,
    sockets: int,
    cpus: str | None,
    processes: int = 1,
    **options: Any,
) -> tuple[FanoutClients | FanoutGroup, dict[str, Any]]:
    """`sockets` held open by one loadgen process, or spread evenly over `processes` (the
    handshakes in flight split between them); `options` go to loadgen (deflate, wire_bytes)."""
    members: list[FanoutClients] = []
    try:
        for index in range(processes):
            share = sockets // processes + (index < sockets % processes)
            args = loadgen_args(
                "fanout",
                ",".join(peer.urls),
                peer.origin,
                ca_for(setup, peer.transport),
                sockets=share,
                concurrency=math.ceil(OPEN_CONCURRENCY / processes),
                subscribe=peer.subscribe,
                **options,
            )
            name = f"loadgen-fanout-{peer.name}-{peer.transport}-{sockets}"
            log = setup.logs / (f"{name}.log" if processes == 1 else f"{name}-{index + 1}.log")
            members.append(FanoutClients(args, setup.base_env, log, cpus))
        clients = members[0] if processes == 1 else FanoutGroup(members)
        return clients, clients.opened(timeout=300)
    except Exception:
        for member in members:
            member.stop()
        raise


def idle_usage(
    setup: Setup,
    peer: Peer,
    sockets: int,
    before: procs.Usage,
    window: float | None,
    redis_server: procs.Server,
) -> dict[str, Any]:
    """Memory per open socket (RSS growth since `before`) and, over `window` seconds, the CPU
    of the server processes (and separately Redis's) while the sockets stay idle."""
    time.sleep(SETTLE_SECONDS)
    opened = procs.usage(peer.servers)
    result: dict[str, Any] = {
        "sockets": sockets,
        "rss_before_mib": round(before.rss_bytes / 2**20, 2),
        "rss_after_mib": round(opened.rss_bytes / 2**20, 2),
        "kib_per_socket": round((opened.rss_bytes - before.rss_bytes) / 1024 / sockets, 2),
        "processes": len(opened.pids),
    }
    if window:
        servers_before, redis_before = procs.usage(peer.servers), procs.usage([redis_server])
        time.sleep(window)
        servers_after, redis_after = procs.usage(peer.servers), procs.usage([redis_server])
        result["window_s"] = window
        result["cpu_percent"] = procs.cpu_percent_between(servers_before, servers_after)
        result["redis_cpu_percent"] = procs.cpu_percent_between(redis_before, redis_after)
    return result


def measure_echo_peers(
    results: dict[str, Any], setup: Setup, mode: Mode, names: list[str], transport: str
) -> list[dict[str, Any]]:
    """Handshakes and echo for every echo peer over one transport, rounds interleaved.

    All the peers' servers run at once on the server CPU (an idle one costs next to nothing)
    and each round measures every peer in turn: a burst of unrelated load on the machine then
    lowers every peer's figures of that round, not one peer's every figure.
    """
    running: list[Peer] = []
    entries: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            try:
                running.append(echo_peer(setup, name, transport, SERVER_CPU).start())
            except Exception as exc:  # one broken peer does not end the run
                fail(results, f"{name} {transport}", exc)
                continue
            entries[name] = {
                "peer": name,
                "transport": transport,
                "pinning": SERVER_CPU,
                "handshakes": [],
                "echo": [],
            }
            if transport == "wss":
                entries[name]["handshakes_resumed"] = []
        time.sleep(1)
        for round_number in range(mode.rounds):
            say(f"handshakes and echo over {transport}, round {round_number + 1}/{mode.rounds}")
            for peer in list(running):
                try:
                    measure_round(setup, mode, peer, entries[peer.name])
                except Exception as exc:
                    fail(results, f"{peer.name} {transport}", exc)
                    running.remove(peer)
                    peer.stop()
    finally:
        for peer in running:
            peer.stop()
    return list(entries.values())


def measure_round(setup: Setup, mode: Mode, peer: Peer, entry: dict[str, Any]) -> None:
    entry["handshakes"].append(handshake_round(setup, peer, mode, resume=False))
    if peer.transport == "wss":
        entry["handshakes_resumed"].append(handshake_round(setup, peer, mode, resume=True))
    entry["echo"].append(echo_round(setup, peer, mode))


def fail(results: dict[str, Any], what: str, exc: Exception) -> None:
    results["errors"].append(f"{what}: {exc}")
    say(f"FAILED {what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def idle_on_fresh(
    setup: Setup, mode: Mode, name: str, transport: str, redis_server: procs.Server
) -> dict[str, Any]:
    """Idle sockets on a fresh server: memory that earlier rounds freed would hide growth."""
    peer = echo_peer(setup, name, transport, SERVER_CPU).start()
    try:
        time.sleep(1)
        before = procs.usage(peer.servers)
        clients, opened = open_sockets(setup, peer, mode.idle_sockets, LOADGEN_CPU)
        try:
            idle = idle_usage(
                setup, peer, mode.idle_sockets, before, mode.echo_idle_seconds, redis_server
            )
        finally:
            clients.close()
            # Let the server finish its disconnect work: uvicorn, stopped while 1,000
            # disconnects are under way, takes 20 s to exit.
            time.sleep(1)
        return {"open": opened, **idle}
    finally:
        peer.stop()


@contextlib.contextmanager
def fanout_server(
    setup: Setup, name: str, transport: str, stage: str, trigger_kind: str | None = None
) -> Iterator[tuple[Peer, Trigger]]:
    """A fresh fan-out peer and its trigger (the peer's own, or `trigger_kind`), both stopped
    on leaving."""
    flush_redis(setup)
    peer = fanout_peer(setup, name, transport).start()
    trigger = None
    try:
        time.sleep(2)
        kind, *extra = peer.trigger
        log = setup.logs / f"trigger-{stage}-{name}-{transport}.log"
        trigger = Trigger(trigger_kind or kind, peer.trigger_env, log, *extra)
        yield peer, trigger
    finally:
        if trigger is not None:
            trigger.stop()
        peer.stop()


def measure_fanout_peer(
    setup: Setup,
    mode: Mode,
    name: str,
    transport: str,
    redis_server: procs.Server,
    next_seq: Callable[[int], int],
) -> list[dict[str, Any]]:
    results = []
    with fanout_server(setup, name, transport, "fanout") as (peer, trigger):
        user_trigger = None
        try:
            if name == "project":
                log = setup.logs / f"trigger-project-user-{transport}.log"
                user_trigger = Trigger("project-user", peer.trigger_env, log)
            sizes = mode.fanout_sizes[transport]
            for size in sizes:
                say(f"fan-out {name} {transport}: {size} sockets")
                fresh = size == sizes[0]
                results.append(
                    fanout_size(
                        setup,
                        mode,
                        peer,
                        trigger,
                        size,
                        fresh,
                        redis_server,
                        next_seq,
                        user_trigger,
                    )
                )
        finally:
            if user_trigger is not None:
                user_trigger.stop()
    return results


def measure_wide_fanout(
    setup: Setup,
    mode: Mode,
    name: str,
    redis_server: procs.Server,
    next_seq: Callable[[int], int],
) -> dict[str, Any]:
    """The wide set over WSS on a fresh server, its sockets spread over several loadgen
    processes: memory, idle CPU, single broadcasts and bursts, as for the other sets."""
    with fanout_server(setup, name, "wss", "wide") as (peer, trigger):
        say(f"wide fan-out {name} wss: {mode.wide_sockets} sockets")
        return fanout_size(
            setup,
            mode,
            peer,
            trigger,
            mode.wide_sockets,
            True,
            redis_server,
            next_seq,
            processes=mode.wide_processes,
            rounds=mode.wide_rounds,
        )


def user_message_cost(
    peer: Peer, trigger: Trigger, next_seq: Callable[[int], int]
) -> dict[str, Any]:
    """The servers' CPU per message to a user none of the open sockets belongs to: the same
    for 100 open sockets as for 5,000 when a worker's work does not grow with its sockets.
    The servers' idle CPU (pings, timers, collections: it grows with the sockets) is measured
    over the same length of time just before, and taken off."""
    time.sleep(0.5)
    idle_before = procs.usage(peer.servers)
    started = time.monotonic()
    sent = trigger.send(next_seq(USER_MESSAGES), USER_MESSAGES)
    time.sleep(0.5)  # the workers' share of the last ones
    busy = time.monotonic() - started
    sent_after = procs.usage(peer.servers)
    time.sleep(busy)
    idle_after = procs.usage(peer.servers)
    sending = sent_after.cpu_seconds - idle_before.cpu_seconds
    idle = idle_after.cpu_seconds - sent_after.cpu_seconds
    return {
        "messages": USER_MESSAGES,
        "server_cpu_ms_per_message": round((sending - idle) * 1000 / USER_MESSAGES, 3),
        "idle_cpu_ms_over_the_same_time": round(idle * 1000, 1),
        "send_ms_median": sorted(sent["call_ms"])[len(sent["call_ms"]) // 2],
    }


def fanout_size(
    setup: Setup,
    mode: Mode,
    peer: Peer,
    trigger: Trigger,
    size: int,
    fresh: bool,
    redis_server: procs.Server,
    next_seq: Callable[[int], int],
    user_trigger: Trigger | None = None,
    processes: int = 1,
    rounds: int | None = None,
) -> dict[str, Any]:
    before = procs.usage(peer.servers)
    clients, opened = open_sockets(setup, peer, size, None, processes)
    result: dict[str, Any] = {
        "peer": peer.name,
        "transport": peer.transport,
        "sockets": size,
        "client_processes": processes,
        "open": opened,
    }
    try:
        if fresh:
            # Only the first (largest) set opens on a fresh server: for later sets the servers
            # reuse memory the earlier sets freed, which would hide their growth.
            result["idle"] = idle_usage(setup, peer, size, before, mode.idle_seconds, redis_server)
        else:
            time.sleep(0.5)
        rounds = rounds or mode.fanout_rounds
        result["rounds"] = broadcast_rounds(clients, trigger, rounds, next_seq)
        result["bursts"] = []
        if size >= 1000:
            for _ in range(mode.burst_rounds):
                first = next_seq(mode.burst)
                clients.mark()
                sent = trigger.send(first, mode.burst)
                seqs = list(range(first, first + mode.burst))
                stats = clients.expect(seqs, EXPECT_TIMEOUT * mode.burst)
                result["bursts"].append({**stats, **sent})
                time.sleep(0.5)
        if user_trigger is not None:
            result["user_message"] = user_message_cost(peer, user_trigger, next_seq)
    finally:
        result["closed"] = clients.close()
        time.sleep(1)  # disconnect work done before the next set opens or the server stops
    return result


def broadcast_rounds(
    clients: FanoutClients | FanoutGroup,
    trigger: Trigger,
    rounds: int,
    next_seq: Callable[[int], int],
) -> list[dict[str, Any]]:
    """One broadcast at a time, each awaited at every socket: latency and lost."""
    results = []
    for _ in range(rounds):
        seq = next_seq(1)
        clients.mark()
        sent = trigger.send(seq)
        results.append({**clients.expect([seq], EXPECT_TIMEOUT), **sent})
        time.sleep(0.3)
    return results


def compression_set(
    setup: Setup,
    mode: Mode,
    peer: Peer,
    trigger: Trigger,
    deflate: bool,
    next_seq: Callable[[int], int],
) -> dict[str, Any]:
    """One set of sockets, offering permessage-deflate or not: how many negotiated it, single
    broadcasts (latency, lost), then one burst (bytes and CPU per delivery)."""
    clients, opened = open_sockets(
        setup, peer, mode.compression_sockets, None, deflate=deflate, wire_bytes=True
    )
    result: dict[str, Any] = {"deflate_offered": deflate, "open": opened}
    try:
        time.sleep(1)
        result["rounds"] = broadcast_rounds(clients, trigger, mode.fanout_rounds, next_seq)
        result["burst"] = compression_burst(peer, trigger, clients, mode, next_seq)
    finally:
        result["closed"] = clients.close()
        time.sleep(1)
    return result


def compression_burst(
    peer: Peer,
    trigger: Trigger,
    clients: FanoutClients | FanoutGroup,
    mode: Mode,
    next_seq: Callable[[int], int],
) -> dict[str, Any]:
    """Bytes received and the servers' CPU per delivery over one burst of broadcasts sent back
    to back. The servers' idle CPU (pings, timers), at the rate read over IDLE_BEFORE_BURST
    seconds just before, is taken off for the length of the burst."""
    count = mode.compression_burst
    bytes_before = clients.bytes_read()
    idle_start = procs.usage(peer.servers)
    time.sleep(IDLE_BEFORE_BURST)
    clients.mark()
    start = procs.usage(peer.servers)
    first = next_seq(count)
    sent = trigger.send(first, count)
    stats = clients.expect(list(range(first, first + count)), EXPECT_TIMEOUT * count)
    end = procs.usage(peer.servers)
    bytes_after = clients.bytes_read()
    idle_rate = (start.cpu_seconds - idle_start.cpu_seconds) / (start.at - idle_start.at)
    idle = idle_rate * (end.at - start.at)
    busy = end.cpu_seconds - start.cpu_seconds
    received = stats["received"]

    def per_delivery(field: str) -> float | None:
        if bytes_after[field] is None or not received:
            return None
        return round((bytes_after[field] - bytes_before[field]) / received, 1)

    return {
        **stats,
        **sent,
        "seconds": round(end.at - start.at, 3),
        "server_cpu_s": round(busy, 4),
        "idle_cpu_s": round(idle, 4),
        "server_cpu_us_per_delivery": round((busy - idle) * 1e6 / received, 2)
        if received
        else None,
        "frame_bytes_per_delivery": per_delivery("frame_bytes"),
        "wire_bytes_per_delivery": per_delivery("wire_bytes"),
    }


def publisher_cookie(env: dict[str, str]) -> str:
    """The Cookie header of a signed-in session of PUBLISHER, made in the servers' database."""
    code = (
        "from django.conf import settings\n"
        "from django.contrib.auth import get_user_model\n"
        "from django.test import Client\n"
        f"user, _ = get_user_model().objects.get_or_create(username={PUBLISHER!r})\n"
        "client = Client()\n"
        # As the sign-in page does: the model backend, which finds the user again (the first
        # backend of the project's, ThrottleBackend, only refuses).
        "client.force_login(user, backend='django.contrib.auth.backends.ModelBackend')\n"
        "name = settings.SESSION_COOKIE_NAME\n"
        "print(f'{name}={client.cookies[name].value}')\n"
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"no session for {PUBLISHER}:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def publisher_args(
    setup: Setup, peer: Peer, cookie: str | None, first: int, count: int
) -> list[str]:
    """The project's publisher: signed in, speaking the current protocol, waiting for each
    `published`. Node's: the same text to the server's `/broadcast` path (no answer there)."""
    if peer.name == "project":
        url = peer.urls[0]
        extra: dict[str, Any] = {
            "cookie": cookie,
            "protocol": f"realtime.v{PROTOCOL_VERSION}",
            "ack": True,
        }
    else:
        url, extra = peer.urls[0].replace("/ws/", "/broadcast"), {}
    return loadgen_args(
        "publish",
        url,
        peer.origin,
        ca_for(setup, peer.transport),
        topic=PUBLISH_TOPIC,
        first_seq=first,
        count=count,
        rate=PUBLISH_RATE,
        **extra,
    )


def delivery_stats(arrivals: dict[str, Any]) -> dict[str, Any]:
    """Every delivery of every message together: p50, p99 and max over all of them (a
    percentile of each message's percentiles would be wrong), overall and per server worker;
    per message only its own figures, without the raw latencies."""
    latencies: list[float] = []
    workers: dict[str, list[float]] = {}
    per_message = []
    per_seq = arrivals["per_seq"]
    for row in per_seq:
        latencies += row["latencies"]
        for worker, values in row["worker_latencies"].items():
            workers.setdefault(worker, []).extend(values)
        per_message.append(
            {key: row[key] for key in ("seq", "received", "lost", "p50_ms", "p99_ms", "max_ms")}
        )
    return {
        **merge.latency_stats(latencies),
        "expected": arrivals["expected"] * len(arrivals["seqs"]),
        "lost": arrivals["lost"],
        "duplicates": arrivals["duplicates"],
        "closed_early": arrivals["closed_early"],
        "frame_bytes": next((r["frame_bytes"] for r in per_seq if r["frame_bytes"]), None),
        "client_cpu_percent": arrivals["client_cpu_percent"],
        "per_worker": {worker: merge.latency_stats(values) for worker, values in workers.items()},
        "per_message": per_message,
    }


def publish_round(
    setup: Setup,
    peer: Peer,
    clients: FanoutClients | FanoutGroup,
    cookie: str | None,
    count: int,
    next_seq: Callable[[int], int],
    label: str,
) -> dict[str, Any]:
    """`count` messages from one publishing socket, PUBLISH_RATE a second, each awaited at
    every subscriber; the servers' CPU from the publisher's start to the last arrival."""
    first = next_seq(count)
    clients.mark()
    before = procs.usage(peer.servers)
    args = publisher_args(setup, peer, cookie, first, count)
    log = setup.logs / f"loadgen-publish-{peer.name}-{peer.transport}-{label}.log"
    published = run_loadgen(args, setup.base_env, log, None, count / PUBLISH_RATE + 60)
    if peer.name == "project" and (published["welcome"] or {}).get("user") != PUBLISHER:
        # The wall takes anonymous notes too: a session that did not sign in would not fail.
        raise RuntimeError(f"the publisher is not signed in as {PUBLISHER}: {published}")
    refused = set(published["refused_seqs"])
    if len(refused) == count:
        raise RuntimeError(f"every publish was refused: {published['first_error']}")
    # A refused publish reaches no one: its arrivals are not awaited (the table counts it).
    seqs = [seq for seq in range(first, first + count) if seq not in refused]
    arrivals = clients.expect(seqs, EXPECT_TIMEOUT, raw=True)
    after = procs.usage(peer.servers)
    return {
        "publisher": published,
        "deliveries": delivery_stats(arrivals),
        "server_cpu_percent": procs.cpu_percent_between(before, after),
        "seconds": round(after.at - before.at, 3),
    }


def measure_publish_peer(
    setup: Setup, mode: Mode, name: str, next_seq: Callable[[int], int]
) -> dict[str, Any]:
    """A fresh server, its subscribers (the project's subscribed to PUBLISH_TOPIC), a few
    messages to warm up, then the measured ones."""
    flush_redis(setup)
    peer = fanout_peer(setup, name, "wss", PUBLISH_ENV).start()
    entry: dict[str, Any] = {
        "peer": name,
        "transport": "wss",
        "sockets": mode.publish_sockets,
        "messages": mode.publish_messages,
        "rate": PUBLISH_RATE,
        "warmup_messages": PUBLISH_WARMUP,
    }
    try:
        cookie = None
        if name == "project":
            peer.subscribe = entry["topic"] = PUBLISH_TOPIC
            cookie = publisher_cookie(peer.trigger_env)
        say(
            f"publish {name} wss: {mode.publish_sockets} subscribers, "
            f"{mode.publish_messages} messages at {PUBLISH_RATE}/s"
        )
        clients, entry["open"] = open_sockets(setup, peer, mode.publish_sockets, None)
        try:
            if entry["open"]["failed"]:
                raise RuntimeError(f"subscribers not open: {entry['open']['first_error']}")
            time.sleep(SETTLE_SECONDS)
            entry["warmup"] = publish_round(
                setup, peer, clients, cookie, PUBLISH_WARMUP, next_seq, "warmup"
            )
            time.sleep(0.5)
            entry.update(
                publish_round(
                    setup, peer, clients, cookie, mode.publish_messages, next_seq, "measured"
                )
            )
        finally:
            entry["closed"] = clients.close()
            time.sleep(1)
    finally:
        peer.stop()
    return entry


# --- run -------------------------------------------------------------------------------------


def run_echo_stage(
    results: dict[str, Any],
    setup: Setup,
    mode: Mode,
    peers: list[str] | None,
    transports: list[str],
    redis_server: procs.Server,
) -> None:
    names = [name for name in ECHO_PEERS if not peers or name in peers]
    for transport in transports:
        entries = measure_echo_peers(results, setup, mode, names, transport)
        for entry in entries:
            if transport in mode.idle_transports:
                say(f"idle sockets: {entry['peer']} {transport}")
                try:
                    entry["idle"] = idle_on_fresh(
                        setup, mode, entry["peer"], transport, redis_server
                    )
                except Exception as exc:
                    fail(results, f"idle {entry['peer']} {transport}", exc)
        results["echo_peers"] += entries


def run_fanout_stage(
    results: dict[str, Any],
    setup: Setup,
    mode: Mode,
    peers: list[str] | None,
    transports: list[str],
    redis_server: procs.Server,
    next_seq: Callable[[int], int],
) -> None:
    for name in FANOUT_PEERS:
        for transport in transports:
            if peers and name not in peers:
                continue
            try:
                results["fanout"] += measure_fanout_peer(
                    setup, mode, name, transport, redis_server, next_seq
                )
            except Exception as exc:
                fail(results, f"fan-out {name} {transport}", exc)


def run_wide_stage(
    results: dict[str, Any],
    setup: Setup,
    mode: Mode,
    peers: list[str] | None,
    transports: list[str],
    redis_server: procs.Server,
    next_seq: Callable[[int], int],
) -> None:
    if "wss" not in transports or not mode.wide_sockets:
        return
    for name in WIDE_PEERS:
        if peers and name not in peers:
            continue
        try:
            results["fanout"].append(measure_wide_fanout(setup, mode, name, redis_server, next_seq))
        except Exception as exc:
            fail(results, f"wide fan-out {name} wss", exc)


def run_compression_stage(
    results: dict[str, Any],
    setup: Setup,
    mode: Mode,
    peers: list[str] | None,
    transports: list[str],
    next_seq: Callable[[int], int],
) -> None:
    """Sets offering permessage-deflate and plain sets, alternating on one running `serve
    --workers 2`, its sockets subscribed to a topic that gets ~1 KiB JSON documents."""
    if "wss" not in transports or (peers and "project" not in peers):
        return
    entry: dict[str, Any] = {
        "peer": "project",
        "transport": "wss",
        "sockets": mode.compression_sockets,
        "sets": [],
    }
    results["compression"] = entry
    sets = 2 * mode.compression_sets
    try:
        with fanout_server(setup, "project-topic", "wss", "compression", "project-document") as (
            peer,
            trigger,
        ):
            for index in range(sets):
                deflate = index % 2 == 0
                offer = "offering permessage-deflate" if deflate else "plain"
                say(f"compression: {mode.compression_sockets} sockets {offer} ({index + 1}/{sets})")
                entry["sets"].append(compression_set(setup, mode, peer, trigger, deflate, next_seq))
    except Exception as exc:
        fail(results, "compression project wss", exc)


def run_publish_stage(
    results: dict[str, Any],
    setup: Setup,
    mode: Mode,
    peers: list[str] | None,
    transports: list[str],
    next_seq: Callable[[int], int],
) -> None:
    """A client's message to one topic's subscribers, the project and Node, WSS only."""
    if "wss" not in transports or not mode.publish_sockets:
        return
    for name in PUBLISH_PEERS:
        if peers and name not in peers:
            continue
        try:
            results["publish"].append(measure_publish_peer(setup, mode, name, next_seq))
        except Exception as exc:
            fail(results, f"publish {name} wss", exc)


def keep_logs(logs: Path) -> str | None:
    """Copy the servers' and clients' logs out of the temporary directory, for a failed run."""
    if not logs.is_dir():
        return None
    kept = Path(tempfile.gettempdir()) / f"realtime-bench-logs-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.copytree(logs, kept)
    say(f"logs kept in {kept}")
    return str(kept)


def run(mode: Mode, stages: list[str], peers: list[str] | None, transports: list[str]) -> dict:
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "mode": mode.name,
        "started": started.isoformat(timespec="seconds"),
        "config": asdict(mode),
        "pinning": {
            # All echo peers of a transport run at once on SERVER_CPU, measured in turn.
            "echo_and_handshakes": {"server": SERVER_CPU, "loadgen": LOADGEN_CPU},
            "idle_on_echo_peers": {"server": SERVER_CPU, "loadgen": LOADGEN_CPU},
            "fanout": "unpinned (2 workers, Redis, trigger and load generator share 2 cores)",
        },
        "echo_peers": [],
        "fanout": [],
        "publish": [],
        "errors": [],
        # Anything else running on these 2 cores skews the figures: a high start value says so.
        "load_average": {"start": os.getloadavg()},
        "source": {"start": report.source_state()},
    }
    seq = [0]

    def next_seq(count: int) -> int:
        first = seq[0]
        seq[0] += count
        return first

    with tempfile.TemporaryDirectory(prefix="realtime-bench-") as tmp:
        try:
            setup, redis_server = prepare(Path(tmp))
            results["environment"] = report.environment()
            if "echo" in stages:
                run_echo_stage(results, setup, mode, peers, transports, redis_server)
            if "fanout" in stages:
                run_fanout_stage(results, setup, mode, peers, transports, redis_server, next_seq)
            if "wide-fanout" in stages:
                run_wide_stage(results, setup, mode, peers, transports, redis_server, next_seq)
            if "compression" in stages:
                run_compression_stage(results, setup, mode, peers, transports, next_seq)
            if "publish" in stages:
                run_publish_stage(results, setup, mode, peers, transports, next_seq)
        finally:
            procs.stop_all()
            if results["errors"]:
                results["logs"] = keep_logs(Path(tmp) / "logs")
    results["load_average"]["end"] = os.getloadavg()
    results["source"]["end"] = report.source_state()
    results["duration_s"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    return results


def sized(mode: Mode, args: argparse.Namespace) -> Mode:
    """The mode with the sizes given on the command line instead of its own."""
    changes: dict[str, Any] = {}
    if args.fanout_sizes:
        sizes = sorted(set(args.fanout_sizes), reverse=True)
        changes["fanout_sizes"] = dict.fromkeys(TRANSPORTS, sizes)
    fields = (
        "wide_sockets",
        "wide_processes",
        "compression_sockets",
        "publish_sockets",
        "publish_messages",
    )
    for field in fields:
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    mode = dataclasses.replace(mode, **changes)
    if mode.wide_sockets in {size for sizes in mode.fanout_sizes.values() for size in sizes}:
        sys.exit(f"--wide-sockets {mode.wide_sockets} is also a fan-out size: pick another")
    return mode


def check_descriptors(mode: Mode, stages: list[str]) -> None:
    """Each loadgen process holds its share of the wide set's sockets: within its limit."""
    limit = procs.raise_fd_limit()
    share = math.ceil(mode.wide_sockets / mode.wide_processes)
    if "wide-fanout" in stages and share + FD_MARGIN > limit:
        sys.exit(
            f"{share} sockets per loadgen process, {limit} file descriptors allowed: "
            f"give --wide-processes {math.ceil(mode.wide_sockets / (limit - FD_MARGIN))} or more"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, default=os.environ.get("BENCH") or "quick")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES)
    parser.add_argument("--peers", nargs="+", choices=sorted({*ECHO_PEERS, *FANOUT_PEERS}))
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=TRANSPORTS)
    parser.add_argument("--fanout-sizes", nargs="+", type=int, metavar="N")
    parser.add_argument("--wide-sockets", type=int, metavar="N", help="0: no wide set")
    parser.add_argument("--wide-processes", type=int, metavar="N")
    parser.add_argument("--compression-sockets", type=int, metavar="N")
    parser.add_argument("--publish-sockets", type=int, metavar="N", help="0: no publish stage")
    parser.add_argument("--publish-messages", type=int, metavar="N")
    parser.add_argument("--out", type=Path, default=report.RESULTS)
    args = parser.parse_args()
    check_tools()
    procs.handle_stop_signals()
    mode = sized(MODES[args.mode], args)
    check_descriptors(mode, args.stages)
    say(f"{mode.name} run; server logs are kept (in /tmp) only if something fails")
    try:
        results = run(mode, args.stages, args.peers, args.transports)
    except KeyboardInterrupt:
        sys.exit("interrupted: every process the run started is stopped; nothing was written")
    written = report.write(results, args.out)
    say("written: " + ", ".join(str(path) for path in written))
    print(report.markdown(results))
    if results["errors"]:
        sys.exit("some measurements failed:\n" + "\n".join(results["errors"]))


if __name__ == "__main__":
    main()
