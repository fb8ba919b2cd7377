"""HTTP URL routes of the realtime app."""

from __future__ import annotations

from django.urls import path

from realtime import health, views

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", health.healthz, name="healthz"),
]
