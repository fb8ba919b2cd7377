"""HTTP URL routes of the realtime app."""

from __future__ import annotations

from django.urls import path

from realtime import views

urlpatterns = [
    path("", views.index, name="index"),
]
