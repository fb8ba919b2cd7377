"""The fixtures: dev certificates, a migrated server environment, servers started per module
and stopped with their whole process group, a private Redis per module. Helpers are in
tests/helpers.py.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from realtime.tls.devca import DevCertPaths, ensure_dev_certificate
from tests.helpers import (
    PYTHON,
    ROOT,
    SERVER_SECRET_KEY,
    TEST_DATABASE_URL,
    ManualClock,
    RestartableRedis,
    ServerProcess,
    daphne_tls_args,
    database_url,
    free_port,
    run_on_postgres,
    start_server,
)

# A test that uses any of these starts real servers or Redis: marked e2e, so that
# `pytest -m "not e2e"` runs the in-process tests alone (modules that start processes without
# them say `pytestmark = pytest.mark.e2e`).
SERVER_FIXTURES = {
    "dev_certs",
    "server_env",
    "start",
    "daphne_tls",
    "redis_server",
    "private_redis",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _close_connections_of_sync_to_async_thread() -> Iterator[None]:
    """Close the database connections a test opened in asgiref's one thread for sync code.

    `sync_to_async` called under `asyncio.run` runs in that thread, which outlives the test;
    unlike database_sync_to_async it never closes its connection, and an open one keeps
    PostgreSQL from dropping the test database at the end of the run.
    """
    yield
    # From a thread of its own: a test may still run an event loop in this one (Playwright's).
    closing = threading.Thread(target=asyncio.run, args=(sync_to_async(connections.close_all)(),))
    closing.start()
    closing.join()


@pytest.fixture
def counters_clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """The clock of the in-process counters (realtime/counters.py: sign-in throttling, API
    rate limits), moved on by the test: `counters_clock.advance(window)` runs past a window."""
    from realtime.web import counters

    clock = ManualClock()
    monkeypatch.setattr(counters._local, "clock", clock)
    return clock


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertPaths:
    """A dev CA and a localhost certificate made by the project's own devcert code."""
    return ensure_dev_certificate(tmp_path_factory.mktemp("certs")).paths


@pytest.fixture(scope="session")
def client_tls(dev_certs: DevCertPaths) -> ssl.SSLContext:
    """A client TLS context that trusts the dev CA only and verifies host names."""
    return ssl.create_default_context(cafile=str(dev_certs.ca_cert))


@pytest.fixture(scope="session")
def server_database() -> Iterator[str]:
    """The servers' PostgreSQL database, created for this run and dropped after it ("" when
    the run is on SQLite: each server_env has its own file)."""
    if not TEST_DATABASE_URL:
        yield ""
        return
    name = f"realtime_servers_{os.getpid()}"
    run_on_postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    run_on_postgres(f"CREATE DATABASE {name}")
    try:
        yield database_url(name)
    finally:
        run_on_postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def database_env(url: str, state) -> dict[str, str]:
    return {"DATABASE_URL": url} if url else {"DJANGO_DB_PATH": str(state / "db.sqlite3")}


@pytest.fixture(scope="session")
def server_env(
    tmp_path_factory: pytest.TempPathFactory, dev_certs: DevCertPaths, server_database: str
) -> dict[str, str]:
    """Environment for server subprocesses: production settings (debug off), a migrated
    database and collected static files in temporary directories."""
    state = tmp_path_factory.mktemp("server-state")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_", "DATABASE_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DJANGO_SECRET_KEY=SERVER_SECRET_KEY,
        **database_env(server_database, state),
        DJANGO_STATIC_ROOT=str(state / "static"),
        REALTIME_CERT_DIR=str(dev_certs.cert.parent),
        PYTHONUNBUFFERED="1",
    )
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        subprocess.run(
            [PYTHON, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True
        )
    return env


@pytest.fixture(scope="module")
def start(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start servers that are stopped at the end of the module: start(args, port, **env)."""
    log_dir = tmp_path_factory.mktemp("logs")
    started: list[ServerProcess] = []

    def _start(args: list[str], port: int, **extra_env: str) -> ServerProcess:
        server = start_server(args, port, server_env, log_dir, **extra_env)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def daphne_tls(start, dev_certs: DevCertPaths) -> ServerProcess:
    port = free_port()
    return start(daphne_tls_args(port, dev_certs), port)


@pytest.fixture(scope="module")
def private_redis(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[], RestartableRedis]]:
    """Start private redis-servers on free ports (the shared one on 6379 is never touched),
    each one a test may stop and start again; every one stops with the module."""
    started: list[RestartableRedis] = []

    def new() -> RestartableRedis:
        started.append(RestartableRedis(free_port(), tmp_path_factory.mktemp("redis")).start())
        return started[-1]

    yield new
    for redis in started:
        redis.stop()


@pytest.fixture(scope="module")
def redis_server(private_redis: Callable[[], RestartableRedis]) -> RestartableRedis:
    """The module's private Redis (`.url`, `.stop()`, `.start()`)."""
    return private_redis()


# --- Chromium (tests/browsing.py has the helpers) --------------------------------------------

BROWSER_HOST = "app.test"


@pytest.fixture(scope="module")
def app_test_certs(tmp_path_factory):
    return ensure_dev_certificate(tmp_path_factory.mktemp("browser-certs"), [BROWSER_HOST]).paths


@pytest.fixture(scope="module")
def https_server(start, app_test_certs, redis_server):
    port = free_port()
    return start(
        daphne_tls_args(port, app_test_certs),
        port,
        DJANGO_ALLOWED_HOSTS=f"{BROWSER_HOST},localhost",
        REDIS_URL=redis_server.url,
    )


@pytest.fixture(scope="module")
def browser(app_test_certs):
    from tests.browsing import CHROMIUM, spki_pin, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                f"--host-resolver-rules=MAP {BROWSER_HOST} 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={spki_pin(app_test_certs.cert)}",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    from tests.browsing import ARTIFACTS

    context = browser.new_context()
    page = context.new_page()
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
