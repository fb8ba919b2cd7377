"""Several hosts, really: network namespaces on this machine (tests/netns.py) as

    data     Redis and PostgreSQL (a private server of each)
    host-a   `manage.py serve --workers 2` on 0.0.0.0:8443, host name "host-a"
    host-b   the same, "host-b"

and, in the test's own namespace, Debian's HAProxy running deploy/haproxy/realtime.cfg in TCP
mode (TLS passes through to the hosts; health checks on /healthz, certificates verified).
Clients connect to HAProxy's address only, as browsers would; the admin of host A is reached
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

from tests.helpers import (
    PYTHON,
    ROOT,
    SERVER_SECRET_KEY,
    BrowserSession,
    admin_send,
    create_users,
    free_port,
    ids_after,
    latest_id,
    send_broadcasts,
    slot,
)
from tests.netns import Host, Network, stop, wait_for_tcp
from tests.resuming import report, start_clients, stop_clients, until_everyone_saw

pytestmark = pytest.mark.e2e

HAPROXY_CONFIG = ROOT / "deploy" / "haproxy" / "realtime.cfg"
PORT = 8443
CLIENTS = 16


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
                "--port", str(PORT), "--cert", str(self.cert), "--key", str(self.key)]  # fmt: skip
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
                f"    server host-a {a.address}:{PORT}\n"
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
                result = Cluster(url, admin_a, hosts, env, haproxy_log, stats)
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
