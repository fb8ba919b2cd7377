"""App configuration for realtime."""

from __future__ import annotations

from django.apps import AppConfig
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.utils.module_loading import autodiscover_modules


class RealtimeConfig(AppConfig):
    name = "realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from realtime import checks  # noqa: F401 - registers the system checks
        from realtime.conf import server_config
        from realtime.ops.quiet_logs import quiet_disallowed_host_logs
        from realtime.server import config
        from realtime.websocket import sessions

        # The server floor reads its configuration through this, never Django's settings.
        config.provide(server_config)
        quiet_disallowed_host_logs()
        from realtime.web import signin

        user_login_failed.connect(signin.count_failure, dispatch_uid="realtime.web.signin")
        user_logged_in.connect(signin.remember_browser, dispatch_uid="realtime.web.signin")
        uid = "realtime.websocket.sessions"
        user_logged_out.connect(sessions.close_sockets_of_session, dispatch_uid=uid)
        user_model = get_user_model()
        pre_save.connect(sessions.remember_access, sender=user_model, dispatch_uid=uid)
        post_save.connect(
            sessions.close_sockets_if_access_changed, sender=user_model, dispatch_uid=uid
        )
        post_delete.connect(
            sessions.close_sockets_of_deleted_user, sender=user_model, dispatch_uid=uid
        )
        from django.contrib.auth.models import Group

        from realtime.messaging import topic_rules

        # A custom user model without PermissionsMixin has neither field.
        user_fields = [getattr(user_model, f, None) for f in ("user_permissions", "groups")]
        throughs = [field.through for field in user_fields if field is not None]
        for through in (*throughs, Group.permissions.through):
            m2m_changed.connect(
                topic_rules.recheck_after_permissions_changed, sender=through, dispatch_uid=uid
            )
        # The page's own topics first: an app's topics.py may replace them (docs/topics.md).
        from realtime.web.page_topics import register_page_topics

        register_page_topics()
        autodiscover_modules("topics")
        # Each app's procedures (docs/rpc.md); realtime's own rpc.py is the registry itself.
        autodiscover_modules("rpc")
