"""Real-server fixtures: dev certificates, daphne and runserver on free ports, a private Redis.

Servers run as subprocesses configured through environment variables, exactly as a user
starts them. Clients verify certificates against the test's own dev CA, never CERT_NONE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from realtime.tls.devca import DevCertPaths, ensure_dev_certificate

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DAPHNE = str(Path(sys.executable).with_name("daphne"))
SERVER_SECRET_KEY = "e2e-tests-secret-key-" + "y" * 40
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on port {port} within {timeout} s")


def workers_to_wait_for(args: list[str]) -> int:
    """How many "is ready" lines a server logs once it serves: one per worker of `serve`.

    `serve`'s supervisor listens before its workers have started, so a port that accepts a
    connection does not yet mean a server that answers.
    """
    if "serve" not in args:
        return 0
    return int(args[args.index("--workers") + 1]) if "--workers" in args else 1


def wait_for_ready_lines(server: ServerProcess, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while server.log().count(" is ready\n") < count:
        if server.process.poll() is not None:
            raise RuntimeError(f"process exited with {server.process.returncode} before ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} worker(s) were not ready within {timeout} s")
        time.sleep(0.1)


@dataclass
class ServerProcess:
    """A server subprocess whose output goes to a log file, shown when a test fails."""

    args: list[str]
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    cwd: Path = ROOT

    def start(self) -> ServerProcess:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for_port(self.port, self.process, START_TIMEOUT)
            wait_for_ready_lines(self, workers_to_wait_for(self.args), START_TIMEOUT)
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.args} did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # The whole process group: runserver's autoreloader runs the server in a child.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertPaths:
    """A dev CA and a localhost certificate made by the project's own devcert code."""
    return ensure_dev_certificate(tmp_path_factory.mktemp("certs")).paths


@pytest.fixture(scope="session")
def client_tls(dev_certs: DevCertPaths) -> ssl.SSLContext:
    """A client TLS context that trusts the dev CA only and verifies host names."""
    return ssl.create_default_context(cafile=str(dev_certs.ca_cert))


@pytest.fixture(scope="session")
def server_env(tmp_path_factory: pytest.TempPathFactory, dev_certs: DevCertPaths) -> dict[str, str]:
    """Environment for server subprocesses: production settings (debug off), a migrated
    database and collected static files in temporary directories."""
    state = tmp_path_factory.mktemp("server-state")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DJANGO_SECRET_KEY=SERVER_SECRET_KEY,
        DJANGO_DB_PATH=str(state / "db.sqlite3"),
        DJANGO_STATIC_ROOT=str(state / "static"),
        REALTIME_CERT_DIR=str(dev_certs.cert.parent),
        PYTHONUNBUFFERED="1",
    )
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        subprocess.run(
            [PYTHON, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True
        )
    return env


def start_server(
    args: list[str], port: int, env: dict[str, str], log_dir: Path, **extra_env: str
) -> ServerProcess:
    return ServerProcess(args, port, {**env, **extra_env}, log_dir / f"server-{port}.log").start()


@pytest.fixture(scope="session")
def start(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start servers that are stopped at the end of the session: start(args, port, **env)."""
    log_dir = tmp_path_factory.mktemp("logs")
    started: list[ServerProcess] = []

    def _start(args: list[str], port: int, **extra_env: str) -> ServerProcess:
        server = start_server(args, port, server_env, log_dir, **extra_env)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


def daphne_tls_args(port: int, certs: DevCertPaths) -> list[str]:
    """The production command from the README, with this test's port and certificate."""
    endpoint = f"ssl:{port}:privateKey={certs.key}:certKey={certs.cert}"
    return [DAPHNE, "-e", endpoint, "project.asgi:application"]


@pytest.fixture(scope="session")
def daphne_tls(start, dev_certs: DevCertPaths) -> ServerProcess:
    port = free_port()
    return start(daphne_tls_args(port, dev_certs), port)


def redis_args(port: int, workdir: Path) -> list[str]:
    """A private, throw-away redis-server: loopback only, nothing kept on disk."""
    return [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(workdir),
    ]  # fmt: skip


class RestartableRedis:
    """A private redis-server on a fixed port that a test may stop and start again."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RestartableRedis:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not on PATH (Debian package redis-server)")
        self.process = subprocess.Popen(
            redis_args(self.port, self.workdir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process, 10)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port (the shared one on 6379 is never touched)."""
    redis = RestartableRedis(free_port(), tmp_path_factory.mktemp("redis")).start()
    try:
        yield redis.url
    finally:
        redis.stop()


def origin_for(url: str) -> str:
    """The browser Origin of a ws(s) URL's host: https://host:port for wss, http:// for ws."""
    scheme, rest = url.split("://", 1)
    return ("https://" if scheme == "wss" else "http://") + rest.split("/", 1)[0]


@contextlib.asynccontextmanager
async def ws_connect(url: str, tls: ssl.SSLContext | None = None, **kwargs) -> ClientConnection:
    """Open a WebSocket as a browser on the same origin would (Origin header included)."""
    kwargs.setdefault("origin", origin_for(url))
    kwargs.setdefault("open_timeout", 10)
    async with connect(url, ssl=tls, **kwargs) as socket_:
        yield socket_


async def receive_json(socket_: ClientConnection, timeout: float = 10) -> dict:
    return json.loads(await asyncio.wait_for(socket_.recv(), timeout))


def create_user(env: dict[str, str], username: str, *, staff: bool) -> str:
    """A user in a server's database (alice: staff, bob: signed in); returns the password."""
    password = f"pw-{username}-0123456789"
    code = (
        "from django.contrib.auth import get_user_model\n"
        f"user, _ = get_user_model().objects.get_or_create(username={username!r})\n"
        f"user.is_staff = user.is_superuser = {staff!r}\n"
        f"user.set_password({password!r})\n"
        "user.save()\n"
    )
    run_in_shell(env, code)
    return password


def run_in_shell(env: dict[str, str], code: str) -> None:
    """Run Python in `manage.py shell` with a server's environment (its database, its Redis)."""
    subprocess.run(
        [PYTHON, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


class BrowserSession:
    """An HTTPS client with cookies that logs in and posts forms as a browser does (CSRF too)."""

    def __init__(self, base_url: str, tls: ssl.SSLContext) -> None:
        import http.cookiejar
        import urllib.request

        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=tls),
            urllib.request.HTTPCookieProcessor(self.cookies),
        )

    def request(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        import urllib.parse
        import urllib.request

        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base_url + path, data=data)
        if form is not None:
            request.add_header("Origin", self.base_url)
            request.add_header("Referer", self.base_url + path)
        with self.opener.open(request, timeout=15) as response:
            return response.status, response.read().decode()

    def csrf_token(self, html: str) -> str:
        marker = 'name="csrfmiddlewaretoken" value="'
        return html.split(marker, 1)[1].split('"', 1)[0]

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[int, str]:
        _, html = self.request(path)
        return self.request(path, {**fields, "csrfmiddlewaretoken": self.csrf_token(html)})

    def login(self, username: str, password: str) -> None:
        status, html = self.post_form(
            "/accounts/login/", {"username": username, "password": password}
        )
        assert status == 200 and "sessionid" in self.cookie_header(), "login failed"

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.cookies)


def admin_send(session: BrowserSession, message: str, audience: str) -> str:
    status, html = session.post_form(
        "/admin/realtime/broadcast/add/",
        {"message": message, "level": "success", "audience": audience},
    )
    assert status == 200, html
    return html


async def drain(socket_, timeout: float = 1.5) -> list[dict]:
    messages = []
    while True:
        try:
            messages.append(json.loads(await asyncio.wait_for(socket_.recv(), timeout)))
        except TimeoutError:
            return messages
