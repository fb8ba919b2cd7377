"""The servers of a benchmark run, each peer started the way it would run in production.

Echo peers (one process each, pinned to one CPU for handshakes and echo):
    bare-daphne      daphne, bench/peers/bare_echo.py (no Django, no Channels)
    project-daphne   daphne, project.asgi (the README's production command)
    project-uvicorn  uvicorn with uvloop, httptools and websockets (what uvicorn[standard] picks)
    node             bench/node/server.mjs, the seed article's https + ws server

Fan-out peers (a broadcast from outside the servers to every socket):
    project   WSS: `manage.py serve --workers 2` (SO_REUSEPORT, the Redis pub/sub layer);
              WS: the same daphne workers on two plaintext ports (serve only speaks TLS)
    tutorial  the Channels tutorial's pattern, 2 daphne workers, core RedisChannelLayer
    node      bench/node/server.mjs, one process

The publish stage uses the project and Node fan-out peers, sent to by a client socket instead:
a client's `publish` to a topic, and a message to the Node server's `/broadcast` path.

WSS servers use the project's `realtime:` endpoint (Mozilla intermediate profile) wherever
daphne serves, so that daphne peers differ in the application only; plain WS uses `tcp:`.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import ROOT, Server, free_port
from bench.trigger import TOPIC
from realtime.server.endpoints import realtime_endpoint
from realtime.tls.devca import DevCertPaths

BIN = Path(sys.executable).parent
DAPHNE = str(BIN / "daphne")
UVICORN = str(BIN / "uvicorn")
SECRET_KEY = "bench-only-secret-key-" + "z" * 40

ECHO_PEERS = ["bare-daphne", "project-daphne", "project-uvicorn", "node"]
# project-topic: the project's server, its sockets subscribed to a topic, sent topic messages.
FANOUT_PEERS = ["project", "project-topic", "tutorial", "node"]
TRANSPORTS = ["wss", "ws"]
PING = '{"type":"ping"}'
PONG = '{"type":"pong"}'  # the project's answer to PING: the same 15 bytes as an echo


@dataclass
class Setup:
    """What every server of a run shares: directories, the dev CA, Redis, environments."""

    work: Path
    logs: Path
    certs: DevCertPaths
    redis_url: str
    base_env: dict[str, str]
    project_db_template: Path

    def project_env(self, transport: str, db_name: str) -> dict[str, str]:
        """Production settings (debug off) with the per-client limits that would refuse a load
        generator lifted: every socket comes from 127.0.0.1, and echo sends as fast as it can."""
        database = self.work / f"{db_name}.sqlite3"
        shutil.copyfile(self.project_db_template, database)
        env = {
            **self.base_env,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_SECRET_KEY": SECRET_KEY,
            "DJANGO_DB_PATH": str(database),
            "DJANGO_STATIC_ROOT": str(self.work / "static"),
            "REALTIME_CERT_DIR": str(self.certs.cert.parent),
            "REDIS_URL": self.redis_url + "/0",
            "REDIS_CHANNEL_LAYER": "pubsub",
            # Every load-generator socket comes from 127.0.0.1: no per-address caps.
            "REALTIME_WS_MAX_PER_CLIENT": "0",
            "REALTIME_MAX_CONNECTIONS_PER_ADDRESS": "0",
            "REALTIME_WS_RATE": "0",
        }
        if transport == "ws":
            env["REALTIME_REQUIRE_TLS"] = "0"  # plain WS is refused (1008) otherwise
        return env

    def tutorial_env(self) -> dict[str, str]:
        return {
            **self.base_env,
            "DJANGO_SETTINGS_MODULE": "bench.peers.tutorial_settings",
            "TUTORIAL_REDIS_URL": self.redis_url + "/1",
        }


@dataclass
class Peer:
    """A running peer: its server processes, the URLs clients use, and how to trigger it."""

    name: str
    transport: str
    servers: list[Server]
    urls: list[str]
    echo_reply: str = PING
    trigger: list[str] = field(default_factory=list)  # bench.trigger arguments
    trigger_env: dict[str, str] = field(default_factory=dict)
    subscribe: str | None = None  # a topic each fan-out socket subscribes to (the project's)

    @property
    def origin(self) -> str:
        # What a browser on the same origin sends; AllowedHostsOriginValidator checks it.
        port = self.urls[0].rsplit(":", 1)[1].split("/")[0]
        return f"{'https' if self.transport == 'wss' else 'http'}://localhost:{port}"

    def start(self) -> Peer:
        for server in self.servers:
            server.start()
        return self

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def endpoint(setup: Setup, transport: str, port: int, reuse_port: bool = False) -> str:
    if transport == "ws":
        return f"tcp:{port}:interface=127.0.0.1"
    return realtime_endpoint(
        port, setup.certs.cert, setup.certs.key, "127.0.0.1", reuse_port=reuse_port
    )


def url(transport: str, port: int) -> str:
    return f"{transport}://127.0.0.1:{port}/ws/"


def log_path(setup: Setup, name: str, transport: str, index: int = 0) -> Path:
    """A log of its own for each start: serve is ready once its log says so, and a log that an
    earlier start of the same peer wrote would say so at once."""
    path = setup.logs / f"{name}-{transport}-{index}.log"
    start = 2
    while path.exists():
        path = setup.logs / f"{name}-{transport}-{index}.{start}.log"
        start += 1
    return path


# --- echo peers ------------------------------------------------------------------------------


def echo_peer(setup: Setup, name: str, transport: str, cpus: str | None) -> Peer:
    port = free_port()
    log = log_path(setup, name, transport)
    if name == "bare-daphne":
        args = [DAPHNE, "-e", endpoint(setup, transport, port), "bench.peers.bare_echo:application"]
        # No Django here: the endpoint's per-address cap is read from the environment.
        env = {**setup.base_env, "REALTIME_MAX_CONNECTIONS_PER_ADDRESS": "0"}
        server = Server(name, args, env, [port], log, cpus)
        return Peer(name, transport, [server], [url(transport, port)])
    if name == "project-daphne":
        args = [DAPHNE, "-e", endpoint(setup, transport, port), "project.asgi:application"]
        env = setup.project_env(transport, f"{name}-{transport}")
        server = Server(name, args, env, [port], log, cpus)
        return Peer(name, transport, [server], [url(transport, port)], echo_reply=PONG)
    if name == "project-uvicorn":
        env = setup.project_env(transport, f"{name}-{transport}")
        server = Server(name, uvicorn_args(setup, transport, port), env, [port], log, cpus)
        return Peer(name, transport, [server], [url(transport, port)], echo_reply=PONG)
    if name == "node":
        server = Server(name, node_args(setup, transport, port), setup.base_env, [port], log, cpus)
        return Peer(name, transport, [server], [url(transport, port)])
    raise ValueError(f"unknown echo peer {name!r}")


def uvicorn_args(setup: Setup, transport: str, port: int) -> list[str]:
    args = [
        UVICORN,
        "project.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "off",  # a Channels ProtocolTypeRouter has no lifespan handler
        "--no-access-log",
        "--log-level",
        "warning",
        # daphne's ceiling in the project (REALTIME_WS_MAX_MESSAGE_SIZE), for the same work.
        "--ws-max-size",
        "65536",
    ]
    if transport == "wss":
        args += ["--ssl-certfile", str(setup.certs.cert), "--ssl-keyfile", str(setup.certs.key)]
    return args


def node_args(setup: Setup, transport: str, port: int) -> list[str]:
    args = ["node", str(ROOT / "bench" / "node" / "server.mjs"), "--port", str(port)]
    if transport == "wss":
        args += ["--cert", str(setup.certs.cert), "--key", str(setup.certs.key)]
    return args


# --- fan-out peers ---------------------------------------------------------------------------


def fanout_peer(
    setup: Setup, name: str, transport: str, project_env: dict[str, str] | None = None
) -> Peer:
    """`project_env`: settings for the project's servers beside Setup.project_env's."""
    if name == "project":
        return project_fanout(setup, transport, project_env)
    if name == "project-topic":
        peer = project_fanout(setup, transport)
        peer.name, peer.trigger, peer.subscribe = name, ["project-topic"], TOPIC
        return peer
    if name == "tutorial":
        return tutorial_fanout(setup, transport)
    if name == "node":
        port = free_port()
        server = Server(
            name,
            node_args(setup, transport, port),
            setup.base_env,
            [port],
            log_path(setup, "fanout-node", transport),
        )
        trigger = ["node", "--port", str(port)]
        if transport == "wss":
            trigger += ["--ca", str(setup.certs.ca_cert)]
        return Peer(
            name,
            transport,
            [server],
            [url(transport, port)],
            trigger=trigger,
            trigger_env=setup.base_env,
        )
    raise ValueError(f"unknown fan-out peer {name!r}")


def project_fanout(setup: Setup, transport: str, extra_env: dict[str, str] | None = None) -> Peer:
    env = {**setup.project_env(transport, f"fanout-project-{transport}"), **(extra_env or {})}
    if transport == "wss":
        port = free_port()
        args = [
            sys.executable,
            "manage.py",
            "serve",
            "--workers",
            "2",
            "--port",
            str(port),
            "--cert",
            str(setup.certs.cert),
            "--key",
            str(setup.certs.key),
        ]
        log = log_path(setup, "fanout-project", transport)
        server = Server("project", args, env, [port], log, ready_workers=2)
        return Peer(
            "project",
            transport,
            [server],
            [url(transport, port)],
            trigger=["project"],
            trigger_env=env,
        )
    servers, urls = [], []
    for index in (1, 2):
        port = free_port()
        args = [DAPHNE, "-e", endpoint(setup, transport, port), "project.asgi:application"]
        worker_env = {**env, "REALTIME_WORKER_ID": f"w{index}"}
        log = log_path(setup, "fanout-project", transport, index)
        servers.append(Server(f"project-w{index}", args, worker_env, [port], log))
        urls.append(url(transport, port))
    return Peer("project", transport, servers, urls, trigger=["project"], trigger_env=env)


def tutorial_fanout(setup: Setup, transport: str) -> Peer:
    env = setup.tutorial_env()
    shared = free_port()
    servers, urls = [], []
    for index in (1, 2):
        # WSS: both workers on one port with SO_REUSEPORT, as serve does; WS: a port each.
        port = shared if transport == "wss" else free_port()
        args = [
            DAPHNE,
            "-e",
            endpoint(setup, transport, port, reuse_port=True),
            "bench.peers.tutorial_asgi:application",
        ]
        log = log_path(setup, "fanout-tutorial", transport, index)
        servers.append(Server(f"tutorial-w{index}", args, env, [port], log))
        urls.append(url(transport, port))
    return Peer(
        "tutorial", transport, servers, sorted(set(urls)), trigger=["tutorial"], trigger_env=env
    )
