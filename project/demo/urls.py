"""The example chat's URLs, included by project/urls.py."""

from __future__ import annotations

from django.urls import path

from project.demo import views

urlpatterns = [
    path("chat/", views.rooms, name="chat"),
    path("chat/<slug:room>/", views.room, name="chat-room"),
]
