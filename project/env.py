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
