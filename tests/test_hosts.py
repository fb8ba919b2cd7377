"""Several hosts, really: network namespaces on this machine (tests/netns.py) as

    data     Redis and PostgreSQL (a private server of each)
    host-a   `manage.py serve --workers 2` on 0.0.0.0:8443, host name "host-a"
    host-b   the same, "host-b"

and, in the test's own namespace, Debian's HAProxy running deploy/haproxy/realtime.cfg in TCP
mode (TLS passes through to the hosts; health checks on /healthz, certificates verified; the
PROXY protocol v2 names each client to the hosts, which run `serve --proxy-protocol`).
Clients connect to HAProxy's address only, as browsers would, from several loopback
addresses (127.0.0.x) where a test needs distinct clients; the admin of host A is reached
through a second HAProxy listener that has only host A behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from websockets.exceptions import ConnectionClosed

from tests.helpers import (
    PYTHON,
    ROOT,
    SERVER_SECRET_KEY,
    BrowserSession,
    admin_send,
    close_code,
    create_users,
    free_port,
    ids_after,
    latest_id,
    receive_json,
    send_broadcasts,
    slot,
    ws_connect,
)
from tests.netns import Host, Network, stop, wait_for_tcp
from tests.resuming import report, start_clients, stop_clients, until_everyone_saw

pytestmark = pytest.mark.e2e

HAPROXY_CONFIG = ROOT / "deploy" / "haproxy" / "realtime.cfg"
PORT = 8443
CLIENTS = 16
WS_CAP = 20  # REALTIME_WS_MAX_PER_CLIENT on the hosts (per worker: 80 over the 4)
SIGNIN_LIMIT = 5  # REALTIME_SIGNIN_MAX_PER_ADDRESS on the hosts


def postgres_binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail(f"PostgreSQL's {name} is missing (Debian package postgresql)")
    return found[-1]


def start_postgres(data: Host, logs: Path) -> Path:
    """A private PostgreSQL server on the data host, trusting the hosts' subnet."""
    directory = Path(tempfile.mkdtemp(prefix="realtime-pg-", dir="/tmp"))
    postgres = pwd.getpwnam("postgres")
    os.chown(directory, postgres.pw_uid, postgres.pw_gid)
    cluster = directory / "data"
    subprocess.run(
        ["runuser", "-u", "postgres", "--", postgres_binary("initdb"), "-D", str(cluster),
         "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True, capture_output=True,
    )  # fmt: skip
    with open(cluster / "pg_hba.conf", "a") as hba:
        hba.write(f"host all all {data.address.rsplit('.', 1)[0]}.0/24 trust\n")
    data.spawn(
        [postgres_binary("postgres"), "-D", str(cluster), "-c", f"listen_addresses={data.address}",
         "-c", "port=5432", "-c", f"unix_socket_directories={directory}", "-c", "fsync=off"],
        logs / "postgres.log",
        user="postgres",
    )  # fmt: skip
    return directory


@dataclass
class AppHost:
    """One app host: its namespace, its `serve` process and its log."""

    host: Host
    hostname: str
    env: dict[str, str]
    logs: Path
    cert: Path
    key: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.logs / f"{self.hostname}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        args = [PYTHON, "manage.py", "serve", "--workers", "2", "--host", "0.0.0.0",
                "--port", str(PORT), "--cert", str(self.cert), "--key", str(self.key),
                "--proxy-protocol"]  # fmt: skip
        self.process = self.host.spawn(args, self.log, self.env, self.hostname, cwd=ROOT)
        deadline = time.monotonic() + 60
        while self.log.read_text().count(" is ready") < 2:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.hostname} did not start:\n{self.log.read_text()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL to `serve` (its workers die with it: PR_SET_PDEATHSIG)."""
        assert self.process is not None
        stop(self.process, signal.SIGKILL)

    def stop(self) -> int:
        assert self.process is not None
        return stop(self.process, signal.SIGTERM, wait=30)


@dataclass
class Cluster:
    url: str  # through HAProxy
    admin_a: BrowserSession  # host A's admin, signed in
    hosts: dict[str, AppHost]
    env: dict[str, str]  # the hosts' settings, for commands run from the test
    haproxy_log: Path
    haproxy_stats: Path  # HAProxy's admin socket
    admin_password: str
    network: Network

    def server_status(self, name: str) -> str:
        """A host's status in HAProxy's `show stat` (UP, DOWN, ...)."""
        with socket.socket(socket.AF_UNIX) as stats:
            stats.connect(str(self.haproxy_stats))
            stats.sendall(b"show stat\n")
            text = b"".join(iter(lambda: stats.recv(65536), b"")).decode()
        header, *rows = text.lstrip("# ").splitlines()
        columns = header.split(",")
        for row in csv.DictReader(rows, fieldnames=columns):
            if row["pxname"] == "realtime" and row["svname"] == name:
                return row["status"]
        raise AssertionError(f"HAProxy does not list {name}")

    def wait_until_in_rotation(self, name: str, timeout: float = 30) -> None:
        """Until HAProxy's health checks have `name` (back) in rotation (a restart quicker
        than two failed checks may never have left it)."""
        deadline = time.monotonic() + timeout
        while (status := self.server_status(name)) != "UP":
            assert time.monotonic() < deadline, (status, self.haproxy_log.read_text()[-3000:])
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, dev_certs, client_tls) -> Iterator[Cluster]:
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is missing (Debian package haproxy; .ci/run installs it)")
    logs = tmp_path_factory.mktemp("hosts")
    with Network() as net:
        data = net.host("data")
        a, b = net.host("host-a"), net.host("host-b")
        redis = data.spawn(
            ["redis-server", "--bind", data.address, "--port", "6379", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            logs / "redis.log",
        )  # fmt: skip
        postgres_dir = start_postgres(data, logs)
        try:
            wait_for_tcp(data.address, 6379, 10, redis)
            wait_for_tcp(data.address, 5432, 30)
            server = f"postgres://postgres@{data.address}:5432"
            with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
                connection.execute("CREATE DATABASE realtime")
            env = {
                **{k: v for k, v in os.environ.items()
                   if not k.startswith(("DJANGO_", "REDIS_", "DATABASE_", "REALTIME_"))},
                "DJANGO_SETTINGS_MODULE": "project.settings",
                "DJANGO_SECRET_KEY": SERVER_SECRET_KEY,
                "DJANGO_ALLOWED_HOSTS": "localhost",
                "DJANGO_STATIC_ROOT": str(logs / "static"),
                "DATABASE_URL": f"{server}/realtime",
                "REDIS_URL": f"redis://{data.address}:6379/0",
                "PYTHONUNBUFFERED": "1",
                # HAProxy reaches the hosts from the bridge's address.
                "REALTIME_TRUSTED_PROXIES": net.subnet_address(1),
                "REALTIME_WS_MAX_PER_CLIENT": str(WS_CAP),
                "REALTIME_SIGNIN_MAX_PER_ADDRESS": str(SIGNIN_LIMIT),
            }  # fmt: skip
            for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
                subprocess.run([PYTHON, "manage.py", *command], cwd=ROOT, env=env, check=True,
                               capture_output=True)  # fmt: skip
            password = create_users(env, {"admin": True})["admin"]
            # serve runs collectstatic at each start: each host its own directory.
            hosts = {
                name: AppHost(host, name, {**env, "DJANGO_STATIC_ROOT": str(logs / name)}, logs,
                              dev_certs.cert, dev_certs.key)
                for name, host in (("host-a", a), ("host-b", b))
            }  # fmt: skip
            for host in hosts.values():
                host.start()
            port, admin_port = free_port(), free_port()
            haproxy_log = logs / "haproxy.log"
            only_a, stats = logs / "only-a.cfg", logs / "haproxy.sock"
            only_a.write_text(
                f"global\n    stats socket {stats} level admin\n"
                f"listen admin-a\n    bind 127.0.0.1:{admin_port}\n"
                f"    server host-a {a.address}:{PORT} send-proxy-v2\n"
            )
            haproxy_env = {
                **os.environ,
                "REALTIME_BIND": f"127.0.0.1:{port}",
                "REALTIME_HOST_A": f"{a.address}:{PORT}",
                "REALTIME_HOST_B": f"{b.address}:{PORT}",
                "REALTIME_SNI": "localhost",
                "REALTIME_CA_FILE": str(dev_certs.ca_cert),
            }
            with open(haproxy_log, "ab") as output:
                haproxy = subprocess.Popen(
                    ["haproxy", "-db", "-f", str(HAPROXY_CONFIG), "-f", str(only_a)],
                    env=haproxy_env, stdout=output, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            try:
                wait_for_tcp("127.0.0.1", port, 10, haproxy)
                admin_a = BrowserSession(f"https://localhost:{admin_port}", client_tls)
                admin_a.login("admin", password)
                url = f"wss://localhost:{port}/ws/"
                result = Cluster(url, admin_a, hosts, env, haproxy_log, stats, password, net)
                result.wait_until_in_rotation("host-a")
                result.wait_until_in_rotation("host-b")
                yield result
            finally:
                stop(haproxy)
        finally:
            for host in net.hosts.values():  # PostgreSQL before its directory goes
                host.stop_all()
            shutil.rmtree(postgres_dir, ignore_errors=True)


def hosts_of(clients) -> set[str]:
    return {worker.rsplit("-", 1)[0] for client in clients for worker in client.welcomed_by[-1:]}


def test_a_broadcast_from_the_admin_on_host_a_reaches_sockets_on_host_b(cluster, client_tls):
    start_id = latest_id(cluster.env)

    async def scenario():
        clients, tasks = await start_clients(cluster.url, client_tls, CLIENTS)
        try:
            assert hosts_of(clients) == {"host-a", "host-b"}, "HAProxy spreads clients"
            assert {slot(c.welcomed_by[-1]) for c in clients} == {"w1", "w2"}
            await asyncio.to_thread(admin_send, cluster.admin_a, "from host A's admin", "everyone")
            expected = ids_after(cluster.env, start_id)
            assert len(expected) == 1
            await until_everyone_saw(clients, expected, 20)
        finally:
            await stop_clients(clients, tasks)

    asyncio.run(scenario())


def test_when_host_a_is_killed_its_clients_move_to_host_b_and_miss_nothing(cluster, client_tls):
    start_id = latest_id(cluster.env)
    env, redis_url = cluster.env, cluster.env["REDIS_URL"]

    async def scenario():
        clients, tasks = await start_clients(cluster.url, client_tls, CLIENTS)
        try:
            on_a = [c for c in clients if c.welcomed_by[-1].startswith("host-a-")]
            assert on_a, "no client landed on host A"
            await asyncio.to_thread(send_broadcasts, env, redis_url, ["before the kill"])
            cluster.hosts["host-a"].kill()
            for n in range(5):
                await asyncio.to_thread(send_broadcasts, env, redis_url, [f"host A down {n}"])
                await asyncio.sleep(0.3)
            expected = ids_after(env, start_id)
            await until_everyone_saw(clients, expected, 40)
            assert all(c.welcomed_by[-1].startswith("host-b-") for c in on_a)
            return clients, expected
        finally:
            await stop_clients(clients, tasks)

    clients, expected = asyncio.run(scenario())
    report("Host A SIGKILL", clients, expected)
    cluster.hosts["host-a"].start()
    cluster.wait_until_in_rotation("host-a")


def test_a_rolling_restart_of_both_hosts_loses_nothing(cluster, client_tls):
    start_id = latest_id(cluster.env)
    env, redis_url = cluster.env, cluster.env["REDIS_URL"]

    async def keep_sending(stop_sending: asyncio.Event) -> None:
        n = 0
        while not stop_sending.is_set():
            await asyncio.to_thread(send_broadcasts, env, redis_url, [f"rolling {n}"])
            n += 1
            await asyncio.sleep(0.2)

    async def scenario():
        clients, tasks = await start_clients(cluster.url, client_tls, CLIENTS)
        stop_sending = asyncio.Event()
        sender = asyncio.create_task(keep_sending(stop_sending))
        try:
            for name in ("host-a", "host-b"):
                host = cluster.hosts[name]
                assert await asyncio.to_thread(host.stop) == 0, host.log.read_text()[-2000:]
                await asyncio.to_thread(host.start)
                await asyncio.to_thread(cluster.wait_until_in_rotation, name)
            stop_sending.set()
            await sender
            expected = ids_after(env, start_id)
            assert len(expected) >= 5
            await until_everyone_saw(clients, expected, 40)
            return clients, expected
        finally:
            stop_sending.set()
            with contextlib.suppress(Exception):
                await sender
            await stop_clients(clients, tasks)

    clients, expected = asyncio.run(scenario())
    report("Rolling restart of both hosts", clients, expected)
    assert all(c.connections >= 2 for c in clients), "every client was moved at least once"


# --- Behind the balancer, each client its own address (the PROXY protocol) ----------------------


async def open_from(url: str, tls, source: str, stack: contextlib.AsyncExitStack):
    """A socket through HAProxy from a loopback address: "welcome", or its close code."""
    socket_ = await stack.enter_async_context(ws_connect(url, tls, local_addr=(source, 0)))
    try:
        return (await receive_json(socket_))["type"]
    except ConnectionClosed:
        return await close_code(socket_)


def test_behind_haproxy_the_socket_cap_counts_each_client_not_the_balancer(cluster, client_tls):
    """Ten clients with 25 sockets each: 250, over three times what four workers would hold
    from one address. Then one client opening 100 is capped on its own."""
    sources = [f"127.0.0.{n}" for n in range(30, 40)]

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            many = await asyncio.gather(
                *(open_from(cluster.url, client_tls, s, stack) for s in sources * 25)
            )
            one = await asyncio.gather(
                *(open_from(cluster.url, client_tls, "127.0.0.40", stack) for _ in range(100))
            )
            return many, one

    many, one = asyncio.run(scenario())
    assert many == ["welcome"] * 250
    assert one.count("welcome") <= 4 * WS_CAP
    assert set(one) == {"welcome", 1013}


def test_behind_haproxy_one_clients_failed_signins_lock_out_only_that_client(cluster, client_tls):
    base = cluster.url.replace("wss://", "https://").removesuffix("/ws/")
    attacker = BrowserSession(base, client_tls, source="127.0.0.50")
    attempts = [attacker.try_login(f"guess-{n}", "wrong") for n in range(SIGNIN_LIMIT + 1)]
    assert attempts[-1] == 429
    admin = BrowserSession(base, client_tls, source="127.0.0.51")
    assert admin.try_login("admin", cluster.admin_password) == 302


HANDSHAKE = """
import socket, ssl, sys
raw = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
raw.sendall(bytes.fromhex(sys.argv[3]))
tls = ssl.create_default_context(cafile=sys.argv[4])
try:
    with tls.wrap_socket(raw, server_hostname="localhost") as connection:
        # None: the peer had already reset the socket, and Python skipped the handshake.
        print("handshake" if connection.version() else "refused")
except (ssl.SSLError, ConnectionError) as error:
    print("refused", type(error).__name__)
"""


def handshake_from(host: Host | None, target: str, header: bytes, ca: Path) -> str:
    """A TLS handshake with a host, after `header`, from another host's namespace (None: the
    test's own, where HAProxy is)."""
    command = [PYTHON, "-c", HANDSHAKE, target, str(PORT), header.hex(), str(ca)]
    if host is not None:
        command = ["ip", "netns", "exec", host.namespace, *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()


def test_a_host_refuses_connections_without_a_proxy_header_or_from_other_peers(cluster, dev_certs):
    from tests.test_client_address import proxy_v2_header

    host_a = cluster.hosts["host-a"]
    target, header = host_a.host.address, proxy_v2_header("198.51.100.1")
    # From HAProxy's address: with the header, TLS follows; without it, nothing does.
    assert handshake_from(None, target, header, dev_certs.ca_cert) == "handshake"
    assert handshake_from(None, target, b"", dev_certs.ca_cert).startswith("refused")
    # From host B, which is no trusted proxy: closed whatever it claims.
    host_b = cluster.hosts["host-b"].host
    assert handshake_from(host_b, target, header, dev_certs.ca_cert).startswith("refused")
