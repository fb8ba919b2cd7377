"""The app as a newcomer adopts it (docs/existing-project.md): build the wheel, install it into a
fresh virtualenv outside the checkout, `django-admin startproject`, the three documented steps,
then real daphne on the `realtime:` endpoint and `manage.py broadcast` through a real Redis.

Installing the dependencies needs the package index (or pip's cache), as any new user does.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.helpers import ROOT, ServerProcess, free_port, receive_json, ws_connect

pytestmark = pytest.mark.timeout(600)

# The documented settings: ASGI_APPLICATION, and CHANNEL_LAYERS as a user would have it.
SETTINGS_TAIL = """
ASGI_APPLICATION = "mysite.asgi.application"

import os
import re

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


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)], ROOT)
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


def adopt(home: Path) -> Path:
    """startproject, then exactly the documented steps; returns the project directory."""
    bin_dir = home / "venv" / "bin"
    run([str(bin_dir / "django-admin"), "startproject", "mysite"], home)
    project = home / "mysite"
    settings = project / "mysite" / "settings.py"
    text = settings.read_text()
    assert FIRST_APP in text
    text = text.replace(FIRST_APP, "    'realtime',\n" + FIRST_APP)
    text += SETTINGS_TAIL
    settings.write_text(text)
    asgi = project / "mysite" / "asgi.py"
    asgi.write_text(
        asgi.read_text().replace(
            "application = get_asgi_application()", "django_asgi_app = get_asgi_application()"
        )
        + ASGI_TAIL
    )
    return project


def newcomer_env(home: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_"))}
    env.pop("PYTHONPATH", None)
    env.update(PATH=f"{home / 'venv' / 'bin'}:{env['PATH']}", REDIS_URL=redis_url)
    return env


@pytest.fixture(scope="module")
def adopted(fresh_venv, redis_server) -> tuple[Path, dict[str, str]]:
    """The new project after the documented steps, migrated, with its dev certificate."""
    home = fresh_venv
    python = str(home / "venv" / "bin" / "python")
    project = adopt(home)
    env = newcomer_env(home, redis_server.url)
    # Nothing of the checkout: the app comes from the venv's site-packages.
    where = run([python, "-c", "import realtime; print(realtime.__file__)"], project, env)
    assert str(home / "venv") in where and str(ROOT) not in where
    run([python, "manage.py", "check"], project, env)
    run([python, "manage.py", "migrate", "--noinput"], project, env)
    run([python, "manage.py", "devcert"], project, env)
    return project, env


def server_command(kind: str, project: Path, port: int) -> list[str]:
    bin_dir = project.parent / "venv" / "bin"
    if kind in ("realtime-daphne", "daphne"):
        keys = "privateKey=certs/localhost-key.pem:certKey=certs/localhost.pem"
        return [str(bin_dir / kind), "-e", f"realtime:{port}:{keys}", "mysite.asgi:application"]
    manage = [str(bin_dir / "python"), "manage.py"]
    if kind == "serve":
        return [*manage, "serve", "--workers", "2", "--port", str(port)]
    return [*manage, "runserver", "--tls", f"127.0.0.1:{port}"]


@pytest.mark.parametrize("kind", ["realtime-daphne", "daphne", "serve", "runserver"])
def test_a_new_project_serves_wss_and_broadcasts_after_three_steps(adopted, kind, tmp_path):
    project, env = adopted
    python = str(project.parent / "venv" / "bin" / "python")
    port = free_port()
    server = ServerProcess(
        server_command(kind, project, port), port, env, tmp_path / f"{kind}.log", cwd=project
    )
    server.start()
    tls = ssl.create_default_context(cafile=str(project / "certs" / "dev-ca.pem"))

    async def scenario():
        async with ws_connect(f"wss://localhost:{port}/ws/", tls) as socket_:
            welcome = await receive_json(socket_)
            await socket_.send('{"type": "ping"}')
            assert (await receive_json(socket_))["type"] == "pong"
            text = f"Hello from {kind}"
            await asyncio.to_thread(run, [python, "manage.py", "broadcast", text], project, env)
            return welcome, await receive_json(socket_)

    try:
        welcome, broadcast = asyncio.run(scenario())
    finally:
        server.stop()
    assert welcome["type"] == "welcome" and welcome["scheme"] == "wss", welcome
    # Plain `daphne` is switched to realtime's Server, and says so; realtime-daphne needs not.
    assert ("Started by plain `daphne`" in server.log()) == (kind == "daphne")
    assert broadcast["type"] == "broadcast" and broadcast["message"] == f"Hello from {kind}"
