"""A strict Content-Security-Policy and a Permissions-Policy on every response.

The pages load their scripts and styles from files (no inline script, style or handler), so
the policy can be strict: a script injected through some future bug would not run, the page
cannot be framed (clickjacking), forms post only here and sockets open only to this origin
(CSP 3 lets 'self' match wss:// on the same host and port). The admin of Django 5.2 works
under it too (its JSON data sits in non-executed `<script type="application/json">`). A
response that sets its own policy keeps it. REALTIME_CONTENT_SECURITY_POLICY and
REALTIME_PERMISSIONS_POLICY replace the defaults (realtime/conf.py; Permissions-Policy denies
the browser features no page here uses); an empty string sends none.

The sign-in throttle's 429 is made by a middleware outside this one and Django's
XFrameOptionsMiddleware, after both ran; `secure()` gives it the same headers (X-Frame-Options
as Django's middleware sets it), so that no page goes out without them.
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
