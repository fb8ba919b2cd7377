"""HTTP URL routes of the realtime app."""

from __future__ import annotations

from django.urls import path

from realtime.api import openapi, publish
from realtime.ops import health, metrics
from realtime.web import views

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("api/publish", publish.publish, name="publish"),
    path("api/openapi.json", openapi.openapi_json, name="openapi"),
]
