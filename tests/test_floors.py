"""The two floors: the server layer (realtime.server) and TLS (realtime.tls) import only each
other, realtime.upstream, realtime.common and third-party code other than Django; below both,
realtime.common imports nothing of realtime but itself, and no Django. Each of their modules is
imported in a fresh interpreter where importing anything else of realtime, or Django, fails.
What the floors are told comes from the app as a plain object (realtime/server/config.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, pkgutil, sys

    COMMON = "realtime.common"
    ALLOWED = ("realtime.server", "realtime.tls", "realtime.upstream", COMMON)
    FLOORS = ("realtime.server", "realtime.tls", COMMON)

    def importer():
        # The module whose import statement is running (past importlib's own frames).
        frame = sys._getframe(2)
        while frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen")):
            frame = frame.f_back
        return frame.f_globals.get("__name__", "")

    class BlockApp(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            below = importer().startswith(COMMON)
            allowed = (COMMON,) if below else ALLOWED
            outside = name.startswith("realtime.") and not name.startswith(allowed)
            django = name == "django" or name.startswith("django.")
            if (outside or django) and importer().startswith(FLOORS):
                who = "realtime.common imported more than itself" if below else None
                raise ImportError(f"{who or 'the server floor imported the app'}: {name}")
            return None

    sys.meta_path.insert(0, BlockApp())
    import realtime.server, realtime.tls, realtime.common
    imported = []
    for package in (realtime.server, realtime.tls, realtime.common):
        for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if module.name.endswith(".__main__"):  # runs the server; cli is imported instead
                continue
            __import__(module.name)
            imported.append(module.name)
    print("\\n".join(imported))
    """
)


def test_the_server_and_tls_floors_import_nothing_of_the_app():
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    assert {"realtime.server.daphne_server", "realtime.server.endpoints"} <= imported
    assert {"realtime.tls.devca", "realtime.tls.profiles"} <= imported
    assert {"realtime.common.close_codes", "realtime.common.rates"} <= imported
    assert len(imported) >= 15


def refused_import(module: str, importer: str) -> str:
    """The blocker's error when a module named `importer` imports `module`."""
    code = f'exec("import {module}", {{"__name__": "{importer}"}})\n'
    code = BLOCKER.replace("import realtime.server, realtime.tls, realtime.common", code)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    return result.stderr


@pytest.mark.parametrize("module", ["realtime.conf", "realtime.routing", "django.conf"])
def test_the_blocker_does_block(module):
    """The same check fails for a floor module that imports the app, or Django."""
    error = refused_import(module, "realtime.server.example")
    assert "the server floor imported the app" in error


@pytest.mark.parametrize("module", ["realtime.server.config", "realtime.tls", "django.conf"])
def test_the_blocker_keeps_common_below_both_floors(module):
    """realtime.common may not import the server floor, TLS, or Django either."""
    error = refused_import(module, "realtime.common.example")
    assert "realtime.common imported more than itself" in error
