"""The project's URLs plus /live-test/, a page whose region `#board` follows topic
"live.test" through `{% realtime_stream %}` (tests/test_live_html_browser.py). Each render
has an id of its own, so that a test sees when the region was fetched again, and says how far
the topic had gone, so that it sees the region is the latest."""

from __future__ import annotations

import uuid

from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.urls import path

from project.urls import urlpatterns as project_urlpatterns
from realtime.messaging import streams

PAGE = """{% load realtime %}<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Live test</title></head>
<body><main><h1>Live test</h1>
<div id="board" data-render="{{ render }}">
{% realtime_stream "live.test" region="board" %}
<p id="position">{{ position }}</p>
<ul id="items"></ul>
</div></main></body></html>
"""


def live_test(request: HttpRequest) -> HttpResponse:
    page = engines["django"].from_string(PAGE)
    # How far the topic was when rendered: a region fetched again shows the latest.
    position = streams.position("live.test")[1]
    return HttpResponse(page.render({"render": uuid.uuid4().hex, "position": position}, request))


urlpatterns = [path("live-test/", live_test), *project_urlpatterns]
