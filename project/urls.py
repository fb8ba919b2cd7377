"""URL configuration: the admin, sign-in, the example chat (project/demo) and the realtime app.

Password reset sends mail: its pages exist only once a mail server is set (DJANGO_EMAIL_HOST),
and its form is throttled per address (realtime/web/signin.py). Without one, a reset would fail
with a traceback after telling the user a mail was sent.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from realtime.web.password_reset import ThrottledPasswordResetView

accounts = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path(
        "password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
]
if settings.EMAIL_HOST:
    accounts += [
        path("password_reset/", ThrottledPasswordResetView.as_view(), name="password_reset"),
        path(
            "password_reset/done/",
            auth_views.PasswordResetDoneView.as_view(),
            name="password_reset_done",
        ),
        path(
            "reset/<uidb64>/<token>/",
            auth_views.PasswordResetConfirmView.as_view(),
            name="password_reset_confirm",
        ),
        path(
            "reset/done/",
            auth_views.PasswordResetCompleteView.as_view(),
            name="password_reset_complete",
        ),
    ]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include(accounts)),
    path("", include("project.demo.urls")),
    path("", include("realtime.urls")),
]
