"""The two floors: the server layer (realtime.server) and TLS (realtime.tls) import nothing
of the app (models, the WebSocket stack, broadcasting, views): each of their modules is
imported in a fresh interpreter where importing any of those fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import ROOT

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, pkgutil, sys

    APP = ("realtime.models", "realtime.websocket", "realtime.broadcasting", "realtime.admin",
           "realtime.views", "realtime.urls", "realtime.health", "realtime.routing",
           "realtime.broadcast", "realtime.apps", "realtime.management")

    class BlockApp(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.startswith(APP):
                raise ImportError(f"the server floor imported the app: {name}")
            return None

    sys.meta_path.insert(0, BlockApp())
    import realtime.server, realtime.tls
    imported = []
    for package in (realtime.server, realtime.tls):
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
    assert len(imported) >= 15


def test_the_blocker_does_block():
    """The same check fails for a module that does import the app."""
    code = BLOCKER.replace("import realtime.server, realtime.tls", "import realtime.routing")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "the server floor imported the app" in result.stderr
