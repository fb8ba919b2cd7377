"""App configuration for realtime."""

from __future__ import annotations

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_out


class RealtimeConfig(AppConfig):
    name = "realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from realtime.sessions import close_sockets_of_session

        user_logged_out.connect(close_sockets_of_session, dispatch_uid="realtime.sessions")
