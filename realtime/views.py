"""The page that connects to /ws/ and shows what happens on the socket."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from realtime.broadcast import recent_for

RECENT_BROADCASTS = 5


def index(request: HttpRequest) -> HttpResponse:
    context = {
        "ws_path": "/ws/",
        "page_secure": request.is_secure(),
        "broadcasts": recent_for(request.user, RECENT_BROADCASTS),
    }
    return render(request, "realtime/index.html", context)
