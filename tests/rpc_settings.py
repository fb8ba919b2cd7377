"""The example project's settings plus tests/rpc_app, whose rpc.py the e2e servers of
tests/test_rpc_e2e.py discover (DJANGO_SETTINGS_MODULE=tests.rpc_settings)."""

from __future__ import annotations

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.rpc_app"]
