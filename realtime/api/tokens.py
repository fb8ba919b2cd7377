"""Tokens for the HTTP publish API (realtime/api/publish.py): created with a name and scopes,
the secret shown once, stored as a SHA-256 hash, revoked by name.

A token is "rtk_" and 256 random bits, so a fast hash is enough; its first 12 characters are
kept in clear to tell tokens apart. Scopes: "broadcasts" and "topic:PATTERN" (shell-style). A
token acts for the user who created it and carries only rights that user holds, checked when it
is made and again at every use on the user as the database has it then (else the right to make
tokens would be the right to broadcast); the server's own "realtime.*" topics take no token.
What each scope needs, and the API around it: docs/operations.md ("HTTP publish API").
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
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
# The server's own topics (realtime/web/page_topics.py registers realtime.online and
# realtime.stats): what staff see live and who is online, never written from outside.
INTERNAL_TOPICS = "realtime."
# The permission a scope needs of the token's creator: a broadcast is what the admin's add
# form sends; a topic message has no admin form, so its model's add permission stands for it.
RIGHTS = {BROADCASTS: "realtime.add_broadcast", TOPIC: "realtime.add_topicmessage"}


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
        if pattern is not None and is_internal(pattern):
            raise ValueError(
                f"{scope!r} names the server's own topics ({INTERNAL_TOPICS}*): no token may "
                "send to them."
            )
    return list(dict.fromkeys(scopes))


def is_internal(topic: str) -> bool:
    return topic.startswith(INTERNAL_TOPICS)


def right_for(scope: str) -> str:
    """The permission `scope` needs of the token's creator (RIGHTS)."""
    return RIGHTS[TOPIC] if scope.startswith(TOPIC) else RIGHTS[BROADCASTS]


def scopes_beyond(user: Any, scopes: list[str]) -> list[str]:
    """The scopes whose right `user` does not hold: every one for no user or an inactive one."""
    if user is None or not user.is_active:
        return list(scopes)
    return [scope for scope in scopes if not user.has_perm(right_for(scope))]


def beyond_message(user: Any, scopes: list[str]) -> str:
    rights = ", ".join(sorted({right_for(scope) for scope in scopes}))
    return (
        f"{user} may not give {', '.join(scopes)}: a token carries only rights its creator "
        f"holds, and this needs {rights}."
    )


def creator_now(token: ApiToken) -> Any:
    """The token's creator as the database has it now, or None (deleted). A new object each
    time: Django caches permissions on a user object, so a cached one keeps a revoked right."""
    if token.created_by_id is None:
        return None
    return get_user_model()._default_manager.filter(pk=token.created_by_id).first()


def creator_holds(token: ApiToken, scope: str) -> bool:
    """Whether the token's creator still holds the right `scope` needs (checked at every use)."""
    return not scopes_beyond(creator_now(token), [scope])


def create(name: str, scopes: list[str], *, created_by: Any) -> tuple[ApiToken, str]:
    """A new token acting for `created_by`, and its secret (shown once: only its hash is
    stored). ValueError for a bad name or scope, a scope beyond the creator's rights, or a name
    an active token already has."""
    if not NAME.fullmatch(name or ""):
        raise ValueError("A token's name is 1 to 100 letters, digits, '.', '_' or '-'.")
    scopes = checked_scopes(scopes)
    if created_by is None:
        raise ValueError("A token acts for a user, whose rights it carries: name its creator.")
    beyond = scopes_beyond(created_by, scopes)
    if beyond:
        raise ValueError(beyond_message(created_by, beyond))
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
