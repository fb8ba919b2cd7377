"""The example project's settings plus the tests' two-way app (tests/two_way)."""

from __future__ import annotations

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.two_way"]
