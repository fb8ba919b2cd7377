"""Settings for the in-process test suite: the project's settings plus test-only speed-ups.

Servers that tests start in subprocesses use project.settings itself, configured by
environment variables, as a user would.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key-" + "x" * 40)

from project.env import database_from_url  # noqa: E402
from project.settings import *  # noqa: E402,F403
from tests.helpers import TEST_DATABASE_URL, database_url  # noqa: E402

if TEST_DATABASE_URL:
    # pytest-django creates test_<this name> for the run and drops it after.
    DATABASES = {
        "default": database_from_url(database_url(f"realtime_{os.getpid()}"), pool=False, max_age=0)
    }

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The manifest storage needs collectstatic first; in-process tests render templates without it.
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# No collectstatic in-process: WhiteNoise would warn about a missing STATIC_ROOT.
STATIC_ROOT = None
