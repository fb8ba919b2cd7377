"""`make bench` imports the project's and the tests' code: every such import in bench/ names a
module and attributes that exist (checked without the bench's own dependencies, which
`make test` does not install)."""

from __future__ import annotations

import ast
import importlib
import importlib.util

import pytest

from tests.helpers import ROOT

OURS = ("realtime", "tests", "project")


def our_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(OURS):
                found += [(path.name, node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize(("file", "module", "name"), our_imports())
def test_bench_imports_exist(file, module, name):
    # A name is an attribute, or a submodule (`from realtime.messaging import maintenance`),
    # which is an attribute only once something imported it.
    found = hasattr(importlib.import_module(module), name) or (
        importlib.util.find_spec(f"{module}.{name}") is not None
    )
    assert found, f"bench/{file}: {module}.{name}"
