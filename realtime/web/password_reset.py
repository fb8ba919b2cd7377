"""Django's password reset, throttled per client address: each request sends a mail, a cheap
way to flood someone's inbox otherwise (realtime/web/signin_throttle.py counts)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.views import PasswordResetView
from django.http import HttpRequest, HttpResponse

from realtime.conf import conf
from realtime.web.signin import refused
from realtime.web.signin_throttle import address_key, increment, read_counts


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
