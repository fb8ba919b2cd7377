"""URLs with password reset served, as when DJANGO_EMAIL_HOST is set (tests/test_signin.py)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from realtime.web.password_reset import ThrottledPasswordResetView

urlpatterns = [
    path("reset/", ThrottledPasswordResetView.as_view(), name="password_reset"),
    path("reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
]
