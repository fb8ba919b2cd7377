"""HTTP URL routes of the realtime app."""

from __future__ import annotations

from django.urls import path

from realtime import health, metrics, openapi, publish_api, views

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("api/publish", publish_api.publish, name="publish"),
    path("api/openapi.json", openapi.openapi_json, name="openapi"),
]
