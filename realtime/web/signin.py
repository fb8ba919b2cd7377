"""Sign-in throttling in Django's sign-in (the counting and decisions:
realtime/web/signin_throttle.py).

It works for every view that signs in through Django's `authenticate()` (the site's and the
admin's login pages): `ThrottleBackend` comes first in AUTHENTICATION_BACKENDS and refuses,
`count_failure` listens to `user_login_failed`, `remember_browser` to `user_logged_in`, and
`ThrottleMiddleware` turns a refusal into the 429 and sets the browser's cookie.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import BaseBackend
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from realtime.conf import conf
from realtime.web.headers import secure
from realtime.web.signin_throttle import account_key, counters, increment, refusal, remember


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
