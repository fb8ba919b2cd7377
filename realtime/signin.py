"""Sign-in throttling per client address and per account, with no lockout an attacker can hold.

Thirty wrong passwords in a row for a superuser met no delay. Two counters now, on the channel
layer's Redis (as presence: every worker and host shares them; INCR is atomic, so parallel
guesses are each counted), in process memory with the in-memory layer (one process), over a
window of REALTIME_SIGNIN_WINDOW seconds from the first failure:

- per client address (IPv6: per /64): REALTIME_SIGNIN_MAX_PER_ADDRESS failures, then every
  sign-in from there is refused until the window ends. An attacker locks out only itself.
- per account: REALTIME_SIGNIN_MAX_PER_ACCOUNT failures from anywhere, then sign-ins to that
  account are refused, except from a browser that signed in to it before: a successful
  sign-in leaves a signed cookie naming the account (90 days), and such a browser has a
  counter of its own. So an attacker spreading guesses over many addresses gets
  REALTIME_SIGNIN_MAX_PER_ACCOUNT a window, and cannot lock the real user out of a browser
  they have used (OWASP's "device cookies"); a browser never used for that account waits for
  the window to end while the attack goes on.

A refusal is HTTP 429 with Retry-After and one sentence saying when to try again; the password
is not checked at all then. It works for every view that signs in through Django's
`authenticate()` (the site's and the admin's login pages): `ThrottleBackend` comes first in
AUTHENTICATION_BACKENDS and refuses, `count_failure` listens to `user_login_failed`, and
`ThrottleMiddleware` turns a refusal into the 429 and sets the cookie. Usernames are hashed in
cache keys and cookies.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

import redis
from django.contrib.auth.backends import BaseBackend
from django.contrib.auth.views import PasswordResetView
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from realtime.common.addresses import request_client_key
from realtime.conf import conf
from realtime.counters import counters_store
from realtime.headers import secure

logger = logging.getLogger(__name__)

DEVICE_COOKIE = "realtime_signin"
DEVICE_DAYS = 90
DEVICE_SALT = "realtime.signin.device"
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


class ThrottleBackend(BaseBackend):
    """First in AUTHENTICATION_BACKENDS: refuses a throttled sign-in before any password check.

    Django's authenticate() stops at PermissionDenied; ThrottleMiddleware answers 429."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, **_: Any):
        if request is None or username is None:
            return None
        message = refusal(request, username)
        if message is not None:
            request.signin_refused = message
            raise PermissionDenied(message)
        return None


def count_failure(sender: Any, credentials: dict[str, Any], request: Any = None, **_: Any) -> None:
    """`user_login_failed`: one more failure for the address and the account (or browser)."""
    if request is None or getattr(request, "signin_refused", None):
        return
    increment(counters(request, str(credentials.get("username", ""))))


def remember_browser(sender: Any, request: Any = None, user: Any = None, **_: Any) -> None:
    """`user_logged_in`: ThrottleMiddleware adds this account to the browser's cookie."""
    if request is not None and user is not None:
        request.signin_account = account_key(user.get_username())


class ThrottleMiddleware:
    """After AuthenticationMiddleware: 429 for a refused sign-in; the browser cookie on success."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        message = getattr(request, "signin_refused", None)
        if message is not None:
            response = refused(request, message)
        account = getattr(request, "signin_account", None)
        if account is not None:
            remember(request, response, account)
        return response


def refused(request: HttpRequest, message: str) -> HttpResponse:
    body = render_to_string("realtime/signin_refused.html", {"message": message}, request)
    response = HttpResponse(body, status=429)
    response["Retry-After"] = str(int(conf.REALTIME_SIGNIN_WINDOW))
    # ThrottleMiddleware replaces the page after the header middlewares ran: add theirs.
    return secure(response)


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


class ThrottledPasswordResetView(PasswordResetView):
    """Django's password reset, at most REALTIME_SIGNIN_MAX_PER_ADDRESS requests a window from
    one address (each sends a mail: a cheap way to flood someone's inbox otherwise)."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        key = f"realtime:reset:address:{address_key(request)}"
        limit = conf.REALTIME_SIGNIN_MAX_PER_ADDRESS
        if limit > 0 and read_counts([key])[0] >= limit:
            minutes = max(1, round(conf.REALTIME_SIGNIN_WINDOW / 60))
            return refused(request, f"Too many password resets. Try again in {minutes} minutes.")
        increment([key])
        return super().post(request, *args, **kwargs)
