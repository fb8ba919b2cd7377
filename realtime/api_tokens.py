"""Tokens for the HTTP publish API (realtime/publish_api.py): created with a name and scopes,
the secret shown once, stored as a SHA-256 hash, revoked by name.

A token is "rtk_" and 43 URL-safe characters: 256 random bits, far too many to guess, so a fast
hash is enough (a password hash would only slow every request down). Its first 12 characters
are kept in clear, to tell tokens apart in the admin and in logs without revealing them.

Scopes: "broadcasts" (send broadcasts), "topic:PATTERN" (send to topics whose name matches the
shell-style PATTERN: "topic:orders.*", "topic:news.sports", "topic:*").
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from realtime.models import ApiToken

PREFIX = "rtk_"
SHOWN_PREFIX = 12  # characters kept in clear
BROADCASTS = "broadcasts"
TOPIC = "topic:"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
USED_EVERY = timedelta(minutes=1)
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9_.:*?\[\]-]{1,200}")


def hash_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def checked_scopes(scopes: list[str]) -> list[str]:
    """The scopes, each checked; ValueError naming the first that is not one."""
    if not scopes:
        raise ValueError("A token needs at least one scope: broadcasts, or topic:PATTERN.")
    for scope in scopes:
        pattern = scope[len(TOPIC) :] if scope.startswith(TOPIC) else None
        if scope != BROADCASTS and (pattern is None or not TOPIC_PATTERN.fullmatch(pattern)):
            raise ValueError(
                f"{scope!r} is not a scope: use broadcasts, or topic:PATTERN with a topic name "
                "pattern (letters, digits, . _ : - and the wildcards * ? [])."
            )
    return list(dict.fromkeys(scopes))


def create(name: str, scopes: list[str], *, created_by: Any = None) -> tuple[ApiToken, str]:
    """A new token and its secret (shown once: only its hash is stored). ValueError for a bad
    name or scope, or a name an active token already has."""
    if not NAME.fullmatch(name or ""):
        raise ValueError("A token's name is 1 to 100 letters, digits, '.', '_' or '-'.")
    scopes = checked_scopes(scopes)
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name,
        prefix=secret[:SHOWN_PREFIX],
        token_hash=hash_of(secret),
        scopes=scopes,
        created_by=created_by,
    )
    try:
        with transaction.atomic():
            token.save()
    except IntegrityError:
        raise ValueError(f"An active token is already named {name!r}: revoke it first.") from None
    return token, secret


def revoke(name: str) -> int:
    """Revoke the active token of that name; how many were (0 or 1)."""
    return ApiToken.objects.filter(name=name, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


def bearer_secret(header: str | None) -> str | None:
    """The secret of an "Authorization: Bearer <secret>" header, else None."""
    scheme, _, secret = (header or "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret.startswith(PREFIX) or len(secret) > 100:
        return None
    return secret


def authenticate(header: str | None) -> ApiToken | None:
    """The active token an Authorization header carries, else None."""
    secret = bearer_secret(header)
    if secret is None:
        return None
    return ApiToken.objects.filter(token_hash=hash_of(secret), revoked_at__isnull=True).first()


def mark_used(token: ApiToken) -> None:
    """Record when the token was last used, at most once a minute (one write, not one a call)."""
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)


def allows_broadcasts(token: ApiToken) -> bool:
    return BROADCASTS in token.scopes


def allows_topic(token: ApiToken, topic: str) -> bool:
    patterns = [scope[len(TOPIC) :] for scope in token.scopes if scope.startswith(TOPIC)]
    return any(fnmatch.fnmatchcase(topic, pattern) for pattern in patterns)
