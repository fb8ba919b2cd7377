"""Sign-in throttling per client address and per account, with no lockout an attacker can hold.

Two counters over a window of REALTIME_SIGNIN_WINDOW seconds from the first failure, on the
channel layer's Redis (shared by every worker and host; in process memory with the in-memory
layer): per client address (IPv6 per /64), and per account, where a browser that signed in to
the account before (a signed cookie) has a counter of its own, so an attacker cannot lock the
real user out of it. A refusal is HTTP 429 with Retry-After, the password not checked at all.
This module counts and decides; realtime/web/signin.py hooks it into Django's sign-in,
realtime/web/password_reset.py into the password reset. Usernames are hashed in cache keys and
cookies. The limits, and why: docs/security.md ("Sign-in").
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

import redis
from django.core import signing
from django.http import HttpRequest, HttpResponse

from realtime.common.addresses import request_client_key
from realtime.conf import conf
from realtime.web.counters import counters_store

logger = logging.getLogger(__name__)

DEVICE_COOKIE = "realtime_signin"
DEVICE_DAYS = 90
DEVICE_SALT = "realtime.signin.device"  # as first released: a new salt would void every cookie
REMEMBERED_ACCOUNTS = 5  # per browser


def read_counts(keys: list[str]) -> list[int]:
    """The counts; zeros if Redis does not answer (sign-in must not depend on it)."""
    try:
        return counters_store().get(keys)
    except redis.RedisError as error:
        logger.warning("Sign-in throttle: Redis did not answer (%s); not throttling.", error)
        return [0] * len(keys)


def increment(keys: list[str]) -> None:
    try:
        counters_store().increment(keys, conf.REALTIME_SIGNIN_WINDOW)
    except redis.RedisError as error:
        logger.warning("Sign-in throttle: Redis did not answer (%s); not counted.", error)


def address_key(request: HttpRequest) -> str:
    return request_client_key(request.META) or "unknown"


def account_key(username: str) -> str:
    return hashlib.sha256(username.strip().casefold().encode()).hexdigest()[:32]


def device(request: HttpRequest) -> dict[str, Any]:
    """This browser's signed record of the accounts it signed in to, or an empty one."""
    try:
        value = signing.loads(
            request.COOKIES.get(DEVICE_COOKIE, ""),
            salt=DEVICE_SALT,
            max_age=DEVICE_DAYS * 86400,
        )
    except signing.BadSignature:
        return {}
    return value if isinstance(value, dict) else {}


def counters(request: HttpRequest, username: str) -> list[str]:
    """The cache keys a failure counts toward: the address, and the account or this browser."""
    account, known = account_key(username), device(request)
    keys = [f"realtime:signin:address:{address_key(request)}"]
    if account in known.get("accounts", []):
        keys.append(f"realtime:signin:device:{known.get('id')}:{account}")
    else:
        keys.append(f"realtime:signin:account:{account}")
    return keys


def refusal(request: HttpRequest, username: str) -> str | None:
    limits = [conf.REALTIME_SIGNIN_MAX_PER_ADDRESS, conf.REALTIME_SIGNIN_MAX_PER_ACCOUNT]
    counts = read_counts(counters(request, username))
    for count, limit in zip(counts, limits, strict=True):
        if limit > 0 and count >= limit:
            minutes = max(1, round(conf.REALTIME_SIGNIN_WINDOW / 60))
            return (
                f"Too many failed sign-ins. Try again in {minutes} minutes; your password "
                "was not checked this time."
            )
    return None


def remember(request: HttpRequest, response: HttpResponse, account: str) -> None:
    known = device(request)
    accounts = [a for a in known.get("accounts", []) if a != account] + [account]
    value = {"id": known.get("id") or secrets.token_urlsafe(12), "accounts": accounts}
    value["accounts"] = value["accounts"][-REMEMBERED_ACCOUNTS:]
    response.set_cookie(
        DEVICE_COOKIE,
        signing.dumps(value, salt=DEVICE_SALT),
        max_age=DEVICE_DAYS * 86400,
        secure=request.is_secure(),
        httponly=True,
        samesite="Lax",
    )
