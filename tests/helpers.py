"""Helpers the tests share: free ports, server subprocesses, a restartable private Redis,
WebSocket and HTTPS clients that verify the dev CA, users, sign-outs and waiting.

Import them from here (`from tests.helpers import ...`); conftest.py holds the fixtures only.
Servers run as subprocesses configured through environment variables, exactly as a user
starts them. Clients verify certificates against the test's own dev CA, never CERT_NONE.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from websockets.asyncio.client import ClientConnection, connect

from realtime.messaging.audience_counts import COUNTS_KEY
from realtime.tls.devca import DevCertPaths

ROOT = Path(__file__).resolve().parent.parent


PYTHON = sys.executable


DAPHNE = str(Path(sys.executable).with_name("daphne"))
# `realtime-daphne` (realtime/server/cli.py) as `serve` runs it: the checkout is not installed.
REALTIME_DAPHNE = [PYTHON, "-m", "realtime.server"]


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


READY = re.compile(r" is ready(\n|\")")  # a text line, or a JSON one (REALTIME_LOG_FORMAT)


def wait_for_ready_lines(server: ServerProcess, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(READY.findall(server.log())) < count:
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


def start_server(
    args: list[str], port: int, env: dict[str, str], log_dir: Path, **extra_env: str
) -> ServerProcess:
    return ServerProcess(args, port, {**env, **extra_env}, log_dir / f"server-{port}.log").start()


def daphne_tls_args(port: int, certs: DevCertPaths) -> list[str]:
    """The production command from the README, with this test's port and certificate."""
    endpoint = f"ssl:{port}:privateKey={certs.key}:certKey={certs.cert}"
    return [DAPHNE, "-e", endpoint, "project.asgi:application"]


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


def create_users(env: dict[str, str], staff_by_name: dict[str, bool]) -> dict[str, str]:
    """Users in a server's database, in one shell run; returns their passwords."""
    code = (
        "from django.contrib.auth import get_user_model\n"
        f"for name, staff in {staff_by_name!r}.items():\n"
        "    user, _ = get_user_model().objects.get_or_create(username=name)\n"
        "    user.is_staff = user.is_superuser = staff\n"
        "    user.set_password(f'pw-{name}-0123456789')\n"
        "    user.save()\n"
    )
    run_in_shell(env, code)
    return {name: f"pw-{name}-0123456789" for name in staff_by_name}


def create_user(env: dict[str, str], username: str, *, staff: bool) -> str:
    """A user in a server's database (alice: staff, bob: signed in); returns the password."""
    return create_users(env, {username: staff})[username]


def run_in_shell(env: dict[str, str], code: str) -> str:
    """Run Python in `manage.py shell` with a server's environment (its database, its Redis);
    returns what it printed."""
    result = subprocess.run(
        [PYTHON, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


class SourceHTTPSHandler(urllib.request.HTTPSHandler):
    """HTTPS from a chosen local address (None: any)."""

    def __init__(self, tls: ssl.SSLContext, source: str | None) -> None:
        super().__init__(context=tls)
        self.source = source

    def https_open(self, req):
        if self.source is None:
            return super().https_open(req)
        connection = functools.partial(http.client.HTTPSConnection, source_address=(self.source, 0))
        return self.do_open(connection, req, context=self._context)


def status_from(source: str, request: urllib.request.Request, tls: ssl.SSLContext) -> int:
    """The HTTP status of `request` sent from the local address `source` (127.0.0.x)."""
    opener = urllib.request.build_opener(SourceHTTPSHandler(tls, source))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


class BrowserSession:
    """An HTTPS client with cookies that logs in and posts forms as a browser does (CSRF too)."""

    def __init__(
        self,
        base_url: str,
        tls: ssl.SSLContext,
        source: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """`source`: the local address to connect from (127.0.0.x: another client on this
        machine); `headers`: sent with every request (a client's own X-Forwarded-For, say)."""
        import http.cookiejar
        import urllib.request

        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            SourceHTTPSHandler(tls, source),
            urllib.request.HTTPCookieProcessor(self.cookies),
        )
        self.opener.addheaders = list((headers or {}).items())

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

    def try_login(self, username: str, password: str) -> int:
        """One sign-in attempt: 302 on success, 200 (the form again) on a wrong password,
        429 when throttled."""
        _, html = self.request("/accounts/login/")
        fields = {"username": username, "password": password}
        fields["csrfmiddlewaretoken"] = self.csrf_token(html)
        try:
            status, _ = self.request("/accounts/login/", fields)
        except urllib.error.HTTPError as error:
            error.close()
            return error.code
        return 302 if "sessionid" in self.cookie_header() else status

    def login(self, username: str, password: str) -> None:
        status, html = self.post_form(
            "/accounts/login/", {"username": username, "password": password}
        )
        assert status == 200 and "sessionid" in self.cookie_header(), "login failed"

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.cookies)


def admin_send(session: BrowserSession, message: str, audience: str) -> str:
    """Send from the admin's add form; `confirmed` answers the "send to everyone?" step."""
    status, html = session.post_form(
        "/admin/realtime/broadcast/add/",
        {"message": message, "level": "success", "audience": audience, "confirmed": "1"},
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


def wait_until(condition, what: str, timeout: float = 30, every: float = 0.2) -> None:
    """Poll `condition` until it holds; fail naming `what` past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class ManualClock:
    """A clock the test moves on (`advance`): code that takes a clock runs past its window
    at once."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def logged_in(port: int, tls, username: str, users: dict) -> BrowserSession:
    session = BrowserSession(f"https://localhost:{port}", tls)
    session.login(username, users[username])
    return session


def slot(worker: str) -> str:
    """The supervisor's name for a worker ("w1") from a welcome's ("<hostname>-w1")."""
    return worker.rsplit("-", 1)[-1]


async def open_spread(url: str, tls, count: int, stack: contextlib.AsyncExitStack, **kw):
    """Open `count` sockets; returns [(socket, worker slot)]."""
    sockets = []
    for _ in range(count):
        socket_ = await stack.enter_async_context(ws_connect(url, tls, **kw))
        sockets.append((socket_, slot((await receive_json(socket_))["worker"])))
    return sockets


async def open_on_both_workers(
    url: str, tls, stack: contextlib.AsyncExitStack, cookie: str = "", at_least: int = 2
):
    """Open `at_least` sockets (signed in with `cookie`), then more until both workers hold
    at least one (the kernel spreads them)."""
    headers = {"Cookie": cookie}
    sockets = await open_spread(url, tls, at_least, stack, additional_headers=headers)
    while len({worker for _, worker in sockets}) < 2 and len(sockets) < 40:
        sockets += await open_spread(url, tls, 1, stack, additional_headers=headers)
    return sockets


async def close_code(socket_, timeout: float = 10) -> int | None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(drain(socket_, timeout), timeout + 1)
    await asyncio.wait_for(socket_.wait_closed(), timeout)
    return socket_.close_code


async def pongs(socket_) -> bool:
    await socket_.send('{"type": "ping"}')
    return (await receive_json(socket_))["type"] == "pong"


def sign_out(session: BrowserSession) -> None:
    _, page = session.request("/")
    session.request("/accounts/logout/", {"csrfmiddlewaretoken": session.csrf_token(page)})


def demote(env: dict, redis_url: str, username: str) -> None:
    """What an admin does in another process: the user is no longer staff."""
    code = (
        "from django.contrib.auth import get_user_model\n"
        f"user = get_user_model().objects.get(username={username!r})\n"
        "user.is_staff = user.is_superuser = False\n"
        "user.save()\n"
    )
    run_in_shell({**env, "REDIS_URL": redis_url}, code)


def healthz(port: int, tls) -> tuple[int, dict]:
    url = f"https://localhost:{port}/healthz"
    try:
        with urllib.request.urlopen(url, context=tls, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


# Messages the worker had to read from the database (Redis lost them, or they came out of
# order): not delivered live.
CAUGHT_UP = re.compile(
    r"never reached this worker through the channel layer( in order)?; delivered them from the "
    r"database to [1-9]"
)


def clients_in_presence(client) -> int:
    """The connected clients the workers' presence in Redis counts now (what a broadcast says
    it reaches): a test polls it instead of guessing when presence has been written."""
    workers = [json.loads(value) for value in client.hgetall(COUNTS_KEY).values()]
    now = time.time()
    return sum(w["counts"].get("everyone", 0) for w in workers if w["until"] >= now)


async def wait_until_async(condition, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


# --- The servers' database: SQLite by default, PostgreSQL when TEST_DATABASE_URL is set --------

# `make test` runs the suite twice: SQLite, then with TEST_DATABASE_URL (a PostgreSQL server
# URL); each run creates its own databases there and drops them at the end.
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")


def database_url(name: str) -> str:
    """TEST_DATABASE_URL with its database name replaced by `name`."""
    base = TEST_DATABASE_URL.split("?", 1)[0].rstrip("/")
    server = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    return f"{server}/{name}"


def run_on_postgres(statement: str) -> None:
    """CREATE or DROP DATABASE, on the server's maintenance database."""
    import psycopg

    with psycopg.connect(database_url("postgres"), autocommit=True) as connection:
        connection.execute(statement)


def server_query(env: dict[str, str], sql: str, params: tuple = ()) -> list[tuple]:
    """Rows from a server's database (`%s` placeholders), SQLite or PostgreSQL as `env` says."""
    if env.get("DATABASE_URL"):
        import psycopg

        with psycopg.connect(env["DATABASE_URL"]) as connection:
            return connection.execute(sql, params).fetchall()
    import sqlite3

    with contextlib.closing(sqlite3.connect(env["DJANGO_DB_PATH"])) as db:
        return db.execute(sql.replace("%s", "?"), params).fetchall()


def send_broadcasts(env: dict, redis_url: str, messages: list[str]) -> list[int]:
    """Send from a separate process through realtime.broadcast.send; returns the ids."""
    code = (
        "import json, sys\n"
        "from realtime import broadcast\n"
        f"print(json.dumps([broadcast.send(m).pk for m in {messages!r}]))\n"
    )
    result = subprocess.run(
        [PYTHON, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=ROOT,
        env={**env, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def ids_after(env: dict, after: int) -> list[int]:
    sql = "SELECT id FROM realtime_broadcast WHERE id > %s AND audience = 'everyone' ORDER BY id"
    return [row[0] for row in server_query(env, sql, (after,))]


def latest_id(env: dict) -> int:
    return server_query(env, "SELECT COALESCE(MAX(id), 0) FROM realtime_broadcast")[0][0]


class Communicator(WebsocketCommunicator):
    """Channels' test WebSocket, waiting up to 10 s for each message where Channels waits 1 s:
    on a loaded CI machine (two suites, PostgreSQL) a sign-out's close took longer now and
    then. Tests that expect nothing still pass their own short timeout, or receive_nothing()."""

    async def receive_from(self, timeout: float = 10) -> str | bytes:
        return await super().receive_from(timeout)

    async def receive_json_from(self, timeout: float = 10) -> Any:
        return await super().receive_json_from(timeout)

    async def receive_output(self, timeout: float = 10) -> Any:
        return await super().receive_output(timeout)
