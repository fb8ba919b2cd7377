"""The page that connects to /ws/ and shows what happens on the socket."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from realtime.broadcasting.replay import broadcasts_position, recent_for

RECENT_BROADCASTS = 5


def index(request: HttpRequest) -> HttpResponse:
    position = broadcasts_position()  # before the list: see broadcasts_position()
    context = {
        "ws_path": "/ws/",
        "page_secure": request.is_secure(),
        "broadcasts": recent_for(request.user, RECENT_BROADCASTS),
        "broadcasts_epoch": position["epoch"],
        "broadcasts_offset": position["offset"],
    }
    return render(request, "realtime/index.html", context)
