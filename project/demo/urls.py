"""The example project's URLs (the chat, the order board), included by project/urls.py."""

from __future__ import annotations

from django.urls import path

from project.demo import views

urlpatterns = [
    path("chat/", views.rooms, name="chat"),
    path("chat/<slug:room>/", views.room, name="chat-room"),
    path("orders/board/", views.order_board, name="order-board"),
]
