"""Typed readers of environment variables for settings.py, failing with the variable's name."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured


class SettingsError(ImproperlyConfigured):
    """A setting from the environment is missing or wrong; the message says which and how."""


def envbool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name, "")
    if value == "":
        return default
    # Exactly what the README's table says: 1 or 0 (unset: the default), nothing else.
    if value == "1":
        return True
    if value == "0":
        return False
    raise SettingsError(f"{name} must be 1 or 0, not {value!r}.")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, not {value!r}.") from None


def envlist(name: str, default: list[str]) -> list[str]:
    """A comma-separated list; blanks around items are ignored."""
    value = os.environ.get(name, "")
    if value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def envhostports(name: str) -> list[tuple[str, int]]:
    """A comma-separated list of host:port pairs."""
    pairs = []
    for entry in envlist(name, []):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"{name} entries must be host:port, not {entry!r}.")
        pairs.append((host, int(port)))
    return pairs


def database_from_url(url: str, *, pool: bool, max_age: int) -> dict[str, object]:
    """DATABASES["default"] for a postgres:// URL (dj-database-url parses it).

    `pool`: Django's connection pool (psycopg_pool), each connection checked before use; else
    persistent connections kept `max_age` seconds, with Django's health check before reuse.
    """
    import dj_database_url

    scheme = url.split("://", 1)[0] if "://" in url else url[:20]
    if scheme not in ("postgres", "postgresql"):
        raise SettingsError(
            f"DATABASE_URL must start with postgres:// (unset: SQLite), not {scheme!r}."
        )
    config = dict(dj_database_url.parse(url))
    options = dict(config.get("OPTIONS") or {})
    if pool:
        # min_size 1: one connection per worker stays open; more open when threads need them.
        options["pool"] = {"min_size": 1, "max_size": 8, "timeout": 10}
        config["CONN_MAX_AGE"] = 0  # Django requires it with a pool
    else:
        config["CONN_MAX_AGE"] = max_age
    # With the pool: each connection is tried before it is handed out (psycopg_pool's check);
    # without: before a persistent one is reused. A database restart kills them all.
    config["CONN_HEALTH_CHECKS"] = True
    config["OPTIONS"] = options
    return config
