"""The README's commands work when pasted: every `manage.py` command it shows exists, takes the
options shown and starts with the environment the line gives it (`DJANGO_DEBUG=1` where it
needs one; the production ones with the DJANGO_SECRET_KEY production sets); every `make`
target and `.venv/bin/` program exists; every file it links to is there."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from django.core.management import get_commands, load_command_class

from tests.helpers import PYTHON, ROOT

pytestmark = pytest.mark.e2e  # runs manage.py and make

README = (ROOT / "README.md").read_text()
SPANS = [span.replace("\\|", "|") for span in re.findall(r"`([^`\n]+)`", README)]
ASSIGNMENT = re.compile(r"^[A-Z_]+=\S*$")


def words(span: str) -> list[str]:
    """A span's words, optional parts ([...]) kept as their words."""
    return shlex.split(span.replace("[", " ").replace("]", " "))


def split_command(span: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments in front, the rest)."""
    tokens = words(span)
    env = {}
    while tokens and ASSIGNMENT.match(tokens[0]):
        name, value = tokens.pop(0).split("=", 1)
        env[name] = value
    return env, tokens


MANAGE = [span for span in SPANS if re.search(r"\.venv/bin/python manage\.py \w", span)]
MAKE = sorted({m for span in SPANS for m in re.findall(r"^(?:\w+=\S+ )*make (\w+)", span)})
PROGRAMS = sorted(set(re.findall(r"\.venv/bin/([\w-]+)", README)))
LINKS = sorted(set(re.findall(r"\]\(((?!https?:)[^)#\s]+)", README)))


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REALTIME_"))}
    env.pop("REDIS_URL", None)
    if extra.get("DJANGO_DEBUG") != "1":  # a production command: production sets the key
        env["DJANGO_SECRET_KEY"] = "readme-test-" + "k" * 50
    return {**env, **extra}


def test_the_readme_shows_the_commands_this_test_checks():
    assert len(MANAGE) >= 8 and {"run", "test", "bench", "superuser"} <= set(MAKE)
    assert "python" in PROGRAMS


@pytest.mark.parametrize("span", MANAGE)
def test_a_manage_py_command_starts_with_the_environment_shown(span):
    extra, tokens = split_command(span)
    name = tokens[tokens.index("manage.py") + 1]
    result = subprocess.run(
        [PYTHON, "manage.py", name, "--help"],
        cwd=ROOT,
        env=clean_env(extra),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{span}\n{result.stderr[-2000:]}"


@pytest.mark.parametrize("span", MANAGE)
def test_a_manage_py_command_takes_the_options_shown(span, settings):
    _, tokens = split_command(span)
    name = tokens[tokens.index("manage.py") + 1]
    assert name in get_commands(), span
    command = load_command_class(get_commands()[name], name)
    usage = command.create_parser("manage.py", name).format_help()
    for option in (t.split("=", 1)[0] for t in tokens if t.startswith("--")):
        assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", usage), (span, option)


@pytest.mark.parametrize("target", MAKE)
def test_a_make_target_exists(target):
    result = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_venv_program_exists(program):
    assert (Path(PYTHON).parent / program).is_file()


@pytest.mark.parametrize("link", LINKS)
def test_a_linked_file_exists(link):
    assert (ROOT / link).exists()


def test_python_m_realtime_server_is_daphnes_command_line():
    span = next(s for s in SPANS if ".venv/bin/python -m realtime.server -e realtime:" in s)
    assert "project.asgi:application" in span
    result = subprocess.run(
        [PYTHON, "-m", "realtime.server", "--help"],
        cwd=ROOT,
        env=clean_env({}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--websocket_timeout" in result.stdout


# --- The deployment docs and service files: every `manage.py serve` option they use exists ---

DEPLOYMENT_FILES = [
    ROOT / "docs" / "deployment.md",
    ROOT / "deploy" / "systemd" / "realtime.service",
    ROOT / "deploy" / "supervisor" / "realtime.conf",
]


def serve_commands(path: Path) -> list[str]:
    """Each `manage.py serve ...` command of a file, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [m.group(0) for m in re.finditer(r"manage\.py serve[^\n`|]*", text)]


@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=lambda p: p.name)
def test_every_serve_option_in_the_deployment_docs_exists(path, settings):
    commands = serve_commands(path)
    assert commands, f"no serve command in {path.name}"
    usage = (
        load_command_class(get_commands()["serve"], "serve")
        .create_parser("manage.py", "serve")
        .format_help()
    )
    for command in commands:
        for option in re.findall(r"(?<!\S)(--[a-z][a-z-]*)", command):
            assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", usage), (command, option)
