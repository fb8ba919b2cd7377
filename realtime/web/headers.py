"""A strict Content-Security-Policy and a Permissions-Policy on every response.

The pages load their scripts and styles from files, so the policy can be strict: an injected
script would not run, the page cannot be framed, forms post and sockets open only to this
origin. A response that sets its own policy keeps it; REALTIME_CONTENT_SECURITY_POLICY and
REALTIME_PERMISSIONS_POLICY replace the defaults (an empty string sends none). `secure()` gives
the sign-in throttle's 429, made outside this middleware, the same headers. The policy, and
why: docs/security.md.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from realtime.conf import conf


class SecurityHeadersMiddleware:
    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return add_policies(self.get_response(request))


def add_policies(response: HttpResponse) -> HttpResponse:
    """The Content-Security-Policy and Permissions-Policy, unless the response has its own."""
    for header, value in (
        ("Content-Security-Policy", conf.REALTIME_CONTENT_SECURITY_POLICY),
        ("Permissions-Policy", conf.REALTIME_PERMISSIONS_POLICY),
    ):
        if value and header not in response:
            response[header] = value
    return response


def secure(response: HttpResponse) -> HttpResponse:
    """Every header this middleware and Django's XFrameOptionsMiddleware add, for a response
    built after both ran."""
    if not getattr(response, "xframe_options_exempt", False):
        response.headers.setdefault("X-Frame-Options", settings.X_FRAME_OPTIONS.upper())
    return add_policies(response)
