"""The docs say what is so: the README's map of realtime/ lists every module and names only
existing ones, every REALTIME_* name in the docs is a setting of realtime/conf.py or an
environment variable the docs mark as one (and something reads it), and the system checks the
docs list are those realtime/checks.py raises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from realtime.conf import DEFAULTS
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()
DOCS = {path.relative_to(ROOT).as_posix(): path.read_text() for path in ROOT.glob("docs/*.md")}
DOCS["README.md"] = README
PACKAGE = ROOT / "realtime"
# Directories of the app that hold no modules of ours to map: Django's data and commands.
NOT_MAPPED = {"migrations", "templates", "static", "__pycache__"}


# --- The map ------------------------------------------------------------------------------


def map_rows() -> list[tuple[list[str], str]]:
    """(the backticked names of the "Where" cell, the "What" cell) of each row of the map."""
    section = README.split("## How it fits together", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) == 2:
            rows.append((re.findall(r"`([^`]+)`", cells[0]), cells[1]))
    return rows


def modules_of(directory: Path) -> set[str]:
    """The modules (without .py) and subpackages directly in a directory of realtime/."""
    names = {path.stem for path in directory.glob("*.py") if path.name != "__init__.py"}
    names |= {
        path.name + "/"
        for path in directory.iterdir()
        if path.is_dir() and path.name not in NOT_MAPPED and (path / "__init__.py").exists()
    }
    return names


def mentioned(cell: str) -> set[str]:
    """Bare module names a "What" cell gives in backticks (`name` or `name/`)."""
    return set(re.findall(r"`([a-z_][a-z0-9_]*/?)`", cell))


def test_the_map_names_every_module_at_the_root_and_only_existing_ones():
    wheres = {name for names, _ in map_rows() for name in names}
    root = {name if name.endswith("/") else name + ".py" for name in modules_of(PACKAGE)}
    root |= {name + "/" for name in NOT_MAPPED - {"__pycache__"}}
    assert root - wheres == set(), "in realtime/ but not in the README's map"
    assert wheres - root == set(), "in the README's map but not in realtime/"


@pytest.mark.parametrize(
    "package", sorted(name for name in modules_of(PACKAGE) if name.endswith("/"))
)
def test_the_map_names_every_module_of_a_package_and_only_existing_ones(package):
    [cell] = [what for names, what in map_rows() if package in names]
    modules = may_name = modules_of(PACKAGE / package)
    if package == "management/":  # the commands are named by what a user types
        commands = {p.stem for p in (PACKAGE / "management/commands").glob("[!_]*.py")}
        assert commands <= set(re.findall(r"`(\w+)", cell)), "a command the map leaves out"
        may_name = modules | commands
    assert modules - mentioned(cell) == set(), f"in realtime/{package} but not in its row"
    assert mentioned(cell) - may_name == set(), f"in the {package} row but not in realtime/"


def test_the_map_has_a_row_for_each_package():
    assert {"server/", "tls/", "messaging/", "websocket/"} <= {
        name for names, _ in map_rows() for name in names
    }


# --- REALTIME_* names ---------------------------------------------------------------------

# Environment variables, not settings: (what reads them, the text there that reads them).
ENVIRONMENT = {
    "REALTIME_LOG_FORMAT": ("project/settings.py", 'os.environ.get("REALTIME_LOG_FORMAT"'),
    "REALTIME_ACCESS_LOG": ("project/settings.py", 'envbool("REALTIME_ACCESS_LOG"'),
    "REALTIME_LOG_MASK_ADDRESSES": ("project/settings.py", 'envbool("REALTIME_LOG_MASK_ADDRESSES"'),
    "REALTIME_WORKER_ID": ("realtime/server/worker.py", '"REALTIME_WORKER_ID"'),
    "REALTIME_LISTEN_FDS": ("realtime/server/listeners.py", '"REALTIME_LISTEN_FDS"'),
    "REALTIME_READY_FD": ("realtime/server/listeners.py", '"REALTIME_READY_FD"'),
    "REALTIME_BIND": ("deploy/haproxy/realtime.cfg", '"${REALTIME_BIND}"'),
    "REALTIME_HOST_A": ("deploy/haproxy/realtime.cfg", '"${REALTIME_HOST_A}"'),
    "REALTIME_HOST_B": ("deploy/haproxy/realtime.cfg", '"${REALTIME_HOST_B}"'),
    "REALTIME_SNI": ("deploy/haproxy/realtime.cfg", '"${REALTIME_SNI}"'),
    "REALTIME_CA_FILE": ("deploy/haproxy/realtime.cfg", '"${REALTIME_CA_FILE}"'),
}
# A name the docs mark as an environment variable: "(environment)" in its settings-table row,
# or the word "environment" in the line that names it.
MARK = re.compile(r"environment", re.IGNORECASE)


def named_in_docs() -> dict[str, list[str]]:
    """Each REALTIME_* name in README.md and docs/ -> the lines that name it."""
    names: dict[str, list[str]] = {}
    for text in DOCS.values():
        for line in text.splitlines():
            for name in re.findall(r"REALTIME_[A-Z0-9_]*[A-Z0-9]", line):
                names.setdefault(name, []).append(line)
    return names


def test_every_realtime_name_in_the_docs_is_a_setting_or_a_marked_environment_variable():
    for name, lines in named_in_docs().items():
        if name in DEFAULTS:
            continue
        if any(setting.startswith(name + "_") for setting in DEFAULTS):  # `REALTIME_RESUME_MAX_*`
            continue
        assert name in ENVIRONMENT, (
            f"{name} is named in the docs, but realtime/conf.py has no such setting"
        )
        assert any(MARK.search(line) for line in lines), (
            f"the docs never say {name} is an environment variable"
        )


@pytest.mark.parametrize("name", sorted(ENVIRONMENT))
def test_an_environment_variable_the_docs_name_is_read_where_they_say(name):
    path, reading = ENVIRONMENT[name]
    assert reading in (ROOT / path).read_text()
    assert name not in DEFAULTS, f"{name} is a setting too: one or the other"


def test_every_setting_is_in_the_readmes_settings_table():
    table = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"REALTIME_[A-Z0-9_]+", table))
    assert set(DEFAULTS) - documented == set(), "a setting the README's table leaves out"


# --- System checks ------------------------------------------------------------------------

CHECKS_SOURCE = (PACKAGE / "checks.py").read_text()
RAISED = set(re.findall(r'id="(realtime\.[EW]\d{3})"', CHECKS_SOURCE))


def test_the_checks_module_lists_the_checks_it_raises():
    docstring = CHECKS_SOURCE.split('"""')[1]
    assert set(re.findall(r"realtime\.[EW]\d{3}", docstring)) == RAISED


def test_every_check_the_docs_name_exists():
    for path, text in DOCS.items():
        for check in re.findall(r"realtime\.[EW]\d{3}", text):
            assert check in RAISED, f"{path} names {check}, which realtime/checks.py never raises"


def test_a_range_of_checks_in_the_docs_is_every_error_check():
    errors = sorted(check for check in RAISED if ".E" in check)
    ranges = []
    for text in DOCS.values():
        ranges += re.findall(r"realtime\.(E\d{3})`?(?:-|–| to )`?(?:realtime\.)?(E\d{3})", text)
    assert ranges, "the docs give the range of the checks somewhere"
    for first, last in ranges:
        assert (f"realtime.{first}", f"realtime.{last}") == (errors[0], errors[-1])


# --- Names --------------------------------------------------------------------------------


def test_no_two_modules_or_packages_of_realtime_share_a_name():
    """Management commands and template tag libraries aside (Django names them by what a
    user types: `manage.py serve`, `{% load realtime %}`)."""
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if parts[0] in ("migrations", "templatetags") or parts[:2] == ("management", "commands"):
            continue
        name = path.parent.name if path.name == "__init__.py" else path.stem
        if name != "__main__":
            seen.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
