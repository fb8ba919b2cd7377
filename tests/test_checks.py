"""realtime/conf.py and realtime/checks.py: defaults for every setting, and a wrong value is a
system check error that names the setting and stops management commands."""

from __future__ import annotations

from io import StringIO

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.management import CommandError, call_command
from django.core.management.base import SystemCheckError

from realtime.checks import check_settings
from realtime.conf import DEFAULTS, conf, describe_channel_layer
from realtime.management import daphne_application
from realtime.messaging.layer import channel_layer
from realtime.messaging.redis_client import redis_hosts


def ids(errors) -> list[str]:
    return [error.id for error in errors]


def test_the_projects_settings_pass():
    assert check_settings() == []


def test_every_setting_has_a_default_when_the_project_sets_none(settings):
    for name in DEFAULTS:
        if hasattr(settings, name):
            delattr(settings, name)
    settings.DEBUG = False
    assert conf.REALTIME_WS_RATE == 10
    assert conf.REALTIME_REQUIRE_TLS is True
    assert conf.REALTIME_CERT_DIR == settings.BASE_DIR / "certs"
    assert conf.REALTIME_FANOUT_REJOIN == 600
    assert check_settings() == []
    settings.DEBUG = True
    assert conf.REALTIME_REQUIRE_TLS is False


def test_zero_turns_off_what_the_readme_says_it_turns_off(settings):
    for name in ("REALTIME_WS_RATE", "REALTIME_WS_MAX_PER_CLIENT", "REALTIME_WS_IDLE_TIMEOUT"):
        setattr(settings, name, 0)
    settings.REALTIME_GC_THRESHOLD = 0
    assert check_settings() == []


def test_an_unknown_name_is_an_error_not_a_silent_default():
    with pytest.raises(AttributeError, match="REALTIME_WS_RAET is not a realtime setting"):
        conf.REALTIME_WS_RAET  # noqa: B018


@pytest.mark.parametrize(
    ("name", "value", "error_id", "words"),
    [
        (
            "REALTIME_WS_BURST",
            0,
            "realtime.E001",
            "REALTIME_WS_BURST must be an integer of at least 1",
        ),
        (
            "REALTIME_WS_RATE",
            -1,
            "realtime.E001",
            "REALTIME_WS_RATE must be an integer of at least 0",
        ),
        ("REALTIME_WS_IDLE_TIMEOUT", "300", "realtime.E001", "REALTIME_WS_IDLE_TIMEOUT"),
        ("REALTIME_FANOUT_CHECK", True, "realtime.E001", "REALTIME_FANOUT_CHECK"),
        ("REALTIME_TLS_PROFILE", "old", "realtime.E002", "'intermediate' or 'modern'"),
        ("REALTIME_ALLOWED_ORIGINS", ["app.example.org"], "realtime.E003", "origins"),
        ("REALTIME_ALLOWED_ORIGINS", "https://a.example", "realtime.E003", "must be a list"),
        ("REALTIME_REQUIRE_TLS", "yes", "realtime.E006", "True or False"),
        ("REALTIME_WS_COMPRESSION", 1, "realtime.E006", "True or False"),
    ],
)
def test_a_wrong_value_names_the_setting(settings, name, value, error_id, words):
    setattr(settings, name, value)
    errors = check_settings()
    assert ids(errors) == [error_id]
    assert words in errors[0].msg


def test_the_core_layers_group_expiry_must_outlast_the_rejoin(settings):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"], "group_expiry": 60},
        }
    }
    settings.REALTIME_FANOUT_REJOIN = 60
    assert ids(check_settings()) == ["realtime.E004"]
    del settings.REALTIME_FANOUT_REJOIN
    assert conf.REALTIME_FANOUT_REJOIN == 30  # unset: half the group expiry
    assert check_settings() == []


def test_realtime_must_come_before_staticfiles(settings):
    apps = [app for app in settings.INSTALLED_APPS if app != "realtime"]
    settings.INSTALLED_APPS = [*apps, "realtime"]
    errors = check_settings()
    assert ids(errors) == ["realtime.E005"]
    assert "before" in errors[0].msg


def test_a_wrong_value_stops_management_commands(settings):
    settings.REALTIME_WS_BURST = -1
    with pytest.raises(SystemCheckError, match=r"realtime.E001.*REALTIME_WS_BURST"):
        call_command("check")


def test_without_channel_layers_the_app_uses_the_in_memory_layer_and_warns(settings):
    del settings.CHANNEL_LAYERS
    assert get_channel_layer() is None  # Channels alone has no layer then
    assert isinstance(channel_layer(), InMemoryChannelLayer)
    assert redis_hosts() == []
    assert conf.REALTIME_FANOUT_REJOIN == 600
    assert describe_channel_layer().startswith("CHANNEL_LAYERS is not set")
    assert ids(check_settings()) == ["realtime.W001"]
    errors = StringIO()
    call_command("check", stderr=errors)  # a warning, not an error: every command runs
    assert "realtime.W001" in errors.getvalue() and "manage.py broadcast" in errors.getvalue()


def test_an_in_memory_layer_set_on_purpose_is_no_warning(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert check_settings() == []
    assert channel_layer() is get_channel_layer()


def test_without_base_dir_or_asgi_application_the_defaults_hold(settings, tmp_path, monkeypatch):
    for name in ("BASE_DIR", "ASGI_APPLICATION", "REALTIME_CERT_DIR"):
        if hasattr(settings, name):
            delattr(settings, name)
    monkeypatch.chdir(tmp_path)
    assert tmp_path / "certs" == conf.REALTIME_CERT_DIR
    with pytest.raises(CommandError, match="Set ASGI_APPLICATION"):
        daphne_application()
