"""The app as a newcomer adopts it (docs/existing-project.md): build the wheel, install it into a
fresh virtualenv outside the checkout, `django-admin startproject`, the documented steps in
every variant (with and without CHANNEL_LAYERS, with and without realtime.urls), then in each
`check`, `migrate`, `devcert`, `runserver --tls`, `serve` and `broadcast` as a user runs them:
real daphne on the `realtime:` endpoint, real TLS verified with the dev CA, a real Redis.

Installing the dependencies needs the package index (or pip's cache), as any new user does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, ServerProcess, drain, free_port, receive_json, ws_connect

pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class Variant:
    """One way to adopt the app: the optional steps taken or not."""

    channel_layers: bool  # step 3: a Redis CHANNEL_LAYERS, or none (the in-memory layer)
    urls: bool  # path("", include("realtime.urls")): the demo page and /healthz

    @property
    def name(self) -> str:
        layers = "redis" if self.channel_layers else "no-channel-layers"
        return f"{layers}-{'urls' if self.urls else 'no-urls'}"


VARIANTS = [Variant(layers, urls) for layers in (True, False) for urls in (True, False)]
FULL = VARIANTS[0]

ASGI_SETTING = """
ASGI_APPLICATION = "mysite.asgi.application"
"""
# CHANNEL_LAYERS as a user would have it.
LAYERS_SETTING = """
import os

REDIS = {"address": os.environ["REDIS_URL"], "socket_timeout": None}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS]},
    }
}
"""
FIRST_APP = "    'django.contrib.admin',\n"
ASGI_TAIL = """
from channels.routing import ProtocolTypeRouter  # noqa: E402
from realtime.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": websocket_application()}
)
"""
URLS_IMPORT = "from django.urls import path\n"
URLS_TAIL = """
urlpatterns += [path("", include("realtime.urls"))]
"""
IN_MEMORY_WARNING = "realtime.W001"


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, *, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """The command's result; it must succeed unless `ok` is False."""
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    if ok:
        assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)]
    run(build, ROOT)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheel) -> Path:
    """A virtualenv outside the checkout with only the wheel and its dependencies."""
    home = tmp_path_factory.mktemp("newcomer")
    venv.create(home / "venv", with_pip=True)
    python = home / "venv" / "bin" / "python"
    # The pinned versions as constraints (pip takes no extras there): what the project is tested
    # with, while only the wheel's own dependencies decide what gets installed.
    pins = (ROOT / "requirements.txt").read_text()
    constraints = home / "constraints.txt"
    constraints.write_text(re.sub(r"\[[a-z,]+\]==", "==", pins))
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    run([*pip, "-c", str(constraints), str(wheel)], home)
    return home


def adopt(home: Path, variant: Variant) -> Path:
    """startproject, then the documented steps this variant takes; returns the project."""
    place = home / variant.name
    place.mkdir()
    run([str(home / "venv" / "bin" / "django-admin"), "startproject", "mysite"], place)
    project = place / "mysite"
    settings = project / "mysite" / "settings.py"
    text = settings.read_text()
    assert FIRST_APP in text
    text = text.replace(FIRST_APP, "    'realtime',\n" + FIRST_APP) + ASGI_SETTING
    settings.write_text(text + (LAYERS_SETTING if variant.channel_layers else ""))
    asgi = project / "mysite" / "asgi.py"
    asgi.write_text(
        asgi.read_text().replace(
            "application = get_asgi_application()", "django_asgi_app = get_asgi_application()"
        )
        + ASGI_TAIL
    )
    if variant.urls:
        urls = project / "mysite" / "urls.py"
        text = urls.read_text().replace(URLS_IMPORT, "from django.urls import include, path\n")
        urls.write_text(text + URLS_TAIL)
    return project


def newcomer_env(home: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_"))}
    env.pop("PYTHONPATH", None)
    env.update(PATH=f"{home / 'venv' / 'bin'}:{env['PATH']}", REDIS_URL=redis_url)
    return env


@dataclass
class Adopted:
    """A new project after the documented steps of its variant, migrated, with its dev
    certificate."""

    variant: Variant
    project: Path
    env: dict[str, str]

    @property
    def bin_dir(self) -> Path:
        return self.project.parent.parent / "venv" / "bin"

    def manage(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        python = str(self.bin_dir / "python")
        return run([python, "manage.py", *args], self.project, self.env, ok=ok)


@pytest.fixture(scope="module")
def projects() -> dict[Variant, Adopted]:
    """One project per variant for the whole module, made when a test first asks for it."""
    return {}


@pytest.fixture
def adopted(request, projects, fresh_venv, redis_server) -> Adopted:
    variant = request.param
    if variant not in projects:
        projects[variant] = set_up(variant, fresh_venv, redis_server.url)
    return projects[variant]


def set_up(variant: Variant, home: Path, redis_url: str) -> Adopted:
    """The documented steps, then `check`, `migrate` and `devcert` as the user runs them."""
    new = Adopted(variant, adopt(home, variant), newcomer_env(home, redis_url))
    # Nothing of the checkout: the app comes from the venv's site-packages.
    where = new.manage("shell", "-c", "import realtime; print(realtime.__file__)").stdout
    assert str(home / "venv") in where and str(ROOT) not in where
    check = new.manage("check")
    # Without CHANNEL_LAYERS every command runs, and says once what the in-memory layer means.
    said = check.stdout + check.stderr
    assert (IN_MEMORY_WARNING in said) == (not variant.channel_layers), said
    assert "Applying realtime.0001_initial... OK" in new.manage("migrate", "--noinput").stdout
    devcert = new.manage("devcert").stdout
    assert (new.project / "certs" / "dev-ca.pem").is_file(), devcert
    assert "mysite.asgi:application" in devcert
    return new


def server_command(kind: str, new: Adopted, port: int) -> list[str]:
    if kind in ("realtime-daphne", "daphne"):
        keys = "privateKey=certs/localhost-key.pem:certKey=certs/localhost.pem"
        app = "mysite.asgi:application"
        return [str(new.bin_dir / kind), "-e", f"realtime:{port}:{keys}", app]
    manage = [str(new.bin_dir / "python"), "manage.py"]
    if kind == "serve":
        # More than one worker needs a layer shared between processes.
        workers = "2" if new.variant.channel_layers else "1"
        return [*manage, "serve", "--workers", workers, "--port", str(port)]
    return [*manage, "runserver", "--tls", f"127.0.0.1:{port}"]


def https_get(url: str, tls: ssl.SSLContext) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=tls, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def assert_pages(new: Adopted, origin: str, tls: ssl.SSLContext) -> None:
    """The admin always; the demo page and /healthz only where realtime.urls is included."""
    assert https_get(f"{origin}/admin/login/", tls)[0] == 200
    status, page = https_get(f"{origin}/", tls)
    healthz, health = https_get(f"{origin}/healthz", tls)
    if new.variant.urls:
        assert status == 200 and 'id="connection-heading"' in page
        assert healthz == 200 and json.loads(health)["status"] == "ok", health
    else:
        assert status == 200 and "The install worked successfully!" in page  # Django's own
        assert healthz == 404


def assert_broadcast_refused(result: subprocess.CompletedProcess[str]) -> None:
    """With the in-memory layer, another process's broadcast cannot reach the servers: the
    command says so and fails (README: it exits non-zero when it cannot reach them)."""
    assert result.returncode != 0, result.stdout
    assert "Nothing sent" in result.stderr and "in-memory" in result.stderr, result.stderr


KINDS = ["runserver", "serve"]
CASES = [
    *[(variant, kind) for variant in VARIANTS for kind in KINDS],
    # Daphne's own command line, and plain `daphne`, once.
    *[(FULL, kind) for kind in ("realtime-daphne", "daphne")],
]


@pytest.mark.parametrize(
    ("adopted", "kind"), CASES, indirect=["adopted"], ids=[f"{v.name}-{k}" for v, k in CASES]
)
def test_a_new_project_serves_https_and_wss_and_takes_broadcasts(adopted, kind, tmp_path):
    new = adopted
    port = free_port()
    server = ServerProcess(
        server_command(kind, new, port), port, new.env, tmp_path / f"{kind}.log", cwd=new.project
    )
    server.start()
    tls = ssl.create_default_context(cafile=str(new.project / "certs" / "dev-ca.pem"))
    text = f"Hello from {kind}"

    async def scenario():
        async with ws_connect(f"wss://localhost:{port}/ws/", tls) as socket_:
            welcome = await receive_json(socket_)
            await socket_.send('{"type": "ping"}')
            assert (await receive_json(socket_))["type"] == "pong"
            await asyncio.to_thread(assert_pages, new, f"https://localhost:{port}", tls)
            sent = await asyncio.to_thread(new.manage, "broadcast", text, ok=False)
            return welcome, sent, await drain(socket_)

    try:
        welcome, sent, received = asyncio.run(scenario())
    finally:
        server.stop()
    assert welcome["type"] == "welcome" and welcome["scheme"] == "wss", welcome
    # Plain `daphne` is switched to realtime's Server, and says so; realtime-daphne needs not.
    assert ("Started by plain `daphne`" in server.log()) == (kind == "daphne")
    broadcasts = [m["message"] for m in received if m["type"] == "broadcast"]
    if new.variant.channel_layers:
        assert sent.returncode == 0, sent.stderr
        assert broadcasts == [text]
    else:
        assert IN_MEMORY_WARNING in server.log()  # runserver's and serve's system checks
        assert_broadcast_refused(sent)
        assert broadcasts == []


@pytest.mark.parametrize("adopted", [VARIANTS[2]], indirect=True, ids=[VARIANTS[2].name])
def test_without_channel_layers_serve_refuses_more_than_one_worker(adopted):
    refused = adopted.manage("serve", "--workers", "2", "--port", str(free_port()), ok=False)
    assert refused.returncode != 0
    assert "needs a shared channel layer" in refused.stderr
