"""The page that connects to /ws/ and shows what happens on the socket."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from realtime.broadcasting.replay import latest_id_for, recent_for

RECENT_BROADCASTS = 5


def index(request: HttpRequest) -> HttpResponse:
    broadcasts = recent_for(request.user, RECENT_BROADCASTS)
    context = {
        "ws_path": "/ws/",
        "page_secure": request.is_secure(),
        "broadcasts": broadcasts,
        "last_broadcast_id": latest_id_for(request.user),
    }
    return render(request, "realtime/index.html", context)
