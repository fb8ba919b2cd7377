"""The page that connects to /ws/ and shows what happens on the socket."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def index(request: HttpRequest) -> HttpResponse:
    return render(
        request, "realtime/index.html", {"ws_path": "/ws/", "page_secure": request.is_secure()}
    )
