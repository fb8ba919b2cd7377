"""project/settings.py as users meet it: environment variables in, clear errors out."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import PYTHON, ROOT

pytestmark = pytest.mark.e2e

STRONG_KEY = "k7Qw9Zp2Lm4Xv8Rt6Yb3Nc5Hd1Jf0Gs-aUe_iOoPlKjMnBvCxZaSdFgHjKl"


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_"))}
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "project.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_debug_off_without_a_secret_key_names_the_variable():
    result = manage("check")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_deploy_checks_pass_with_only_the_three_variables():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SECRET_KEY=STRONG_KEY,
        DJANGO_ALLOWED_HOSTS="realtime.example.org",
        REDIS_URL="redis://127.0.0.1:6379/0",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def setting(name: str, **env: str) -> str:
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        f"from django.conf import settings; print(settings.{name})",
        **env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def conf_value(name: str, **env: str) -> str:
    """A realtime setting as the app sees it (realtime.conf: the project's value or the default)."""
    code = f"from realtime.conf import conf; print(conf.{name})"
    result = manage("shell", "--no-imports", "-c", code, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_debug_is_off_unless_set_to_1():
    assert setting("DEBUG", DJANGO_SECRET_KEY=STRONG_KEY) == "False"
    assert setting("DEBUG", DJANGO_DEBUG="1") == "True"


def test_allowed_hosts_default_to_local_names_and_feed_csrf_origins():
    assert setting("ALLOWED_HOSTS", DJANGO_DEBUG="1") == "['localhost', '127.0.0.1', '[::1]']"
    origins = setting(
        "CSRF_TRUSTED_ORIGINS", DJANGO_DEBUG="1", DJANGO_ALLOWED_HOSTS="a.example, .b.example"
    )
    assert origins == "['https://a.example', 'https://*.b.example']"


def test_without_redis_url_the_layer_is_in_memory():
    assert "InMemoryChannelLayer" in setting("CHANNEL_LAYERS", DJANGO_DEBUG="1")


def test_redis_and_rediss_urls_select_channels_redis_without_socket_timeout():
    for url in ("redis://127.0.0.1:6379/0", "rediss://:secret@cache.example:6380/0"):
        layers = setting("CHANNEL_LAYERS", DJANGO_DEBUG="1", REDIS_URL=url)
        assert "channels_redis.pubsub.RedisPubSubChannelLayer" in layers
        assert "'socket_timeout': None" in layers


def test_a_redis_url_of_another_scheme_is_refused_clearly():
    result = manage("check", DJANGO_DEBUG="1", REDIS_URL="http://127.0.0.1:6379")
    assert result.returncode != 0
    assert "REDIS_URL must start with redis:// or rediss://" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_boolean_names_the_variable():
    for value in ("maybe", "true", "yes", "on"):
        result = manage("check", DJANGO_DEBUG=value)
        assert result.returncode != 0
        assert f"DJANGO_DEBUG must be 1 or 0, not {value!r}" in result.stderr


def test_daphne_without_a_secret_key_names_the_variable(server_env):
    from tests.helpers import DAPHNE

    env = {k: v for k, v in server_env.items() if k != "DJANGO_SECRET_KEY"}
    result = subprocess.run(
        [DAPHNE, "-p", "0", "project.asgi:application"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_redis_sentinels_configure_channels_redis_for_high_availability():
    layers = setting(
        "CHANNEL_LAYERS",
        DJANGO_DEBUG="1",
        REDIS_SENTINELS="10.0.0.1:26379, 10.0.0.2:26379",
        REDIS_SENTINEL_MASTER="realtime",
    )
    assert "'sentinels': [('10.0.0.1', 26379), ('10.0.0.2', 26379)]" in layers
    assert "'master_name': 'realtime'" in layers


def test_the_layer_class_can_be_chosen():
    layers = setting(
        "CHANNEL_LAYERS", DJANGO_DEBUG="1", REDIS_URL="redis://h:1/0", REDIS_CHANNEL_LAYER="core"
    )
    assert "channels_redis.core.RedisChannelLayer" in layers
    result = manage(
        "check", DJANGO_DEBUG="1", REDIS_URL="redis://h:1/0", REDIS_CHANNEL_LAYER="kafka"
    )
    assert "REDIS_CHANNEL_LAYER must be pubsub or core" in result.stderr


def test_the_core_layers_group_expiry_is_set_and_must_outlast_the_fanouts_rejoin():
    core = {"DJANGO_DEBUG": "1", "REDIS_URL": "redis://h:1/0", "REDIS_CHANNEL_LAYER": "core"}
    assert "'group_expiry': 86400" in setting("CHANNEL_LAYERS", **core)
    assert "'group_expiry': 30" in setting("CHANNEL_LAYERS", **core, REDIS_GROUP_EXPIRY="30")
    # Unset, the rejoin interval is 600 s, or half the group expiry when that is shorter.
    assert conf_value("REALTIME_FANOUT_REJOIN", **core) == "600"
    assert conf_value("REALTIME_FANOUT_REJOIN", **core, REDIS_GROUP_EXPIRY="30") == "15"
    result = manage("check", **core, REDIS_GROUP_EXPIRY="600", REALTIME_FANOUT_REJOIN="600")
    assert (
        "(realtime.E004) REALTIME_FANOUT_REJOIN (600 s) must be shorter than the core layer's "
        "group_expiry (600 s)"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_the_fanout_periods_must_be_at_least_a_second():
    result = manage("check", DJANGO_DEBUG="1", REALTIME_FANOUT_CHECK="0")
    assert "(realtime.E001) REALTIME_FANOUT_CHECK must be an integer of at least 1, not 0." in (
        result.stderr
    )


def test_a_server_that_runs_no_checks_refuses_a_wrong_value_at_start():
    """daphne and realtime-daphne import the ASGI application and run no system checks:
    websocket_application() runs realtime's."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_"))}
    result = subprocess.run(
        [PYTHON, "-c", "import project.asgi"],
        cwd=ROOT,
        env={**clean, "DJANGO_DEBUG": "1", "REALTIME_FANOUT_CHECK": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured: realtime.E001: REALTIME_FANOUT_CHECK must be an integer" in (
        result.stderr
    )
