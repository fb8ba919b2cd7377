"""`manage.py notify USERNAME "text" [--level L]`: a notification to one user, from a shell,
cron or a deploy script, on every page of theirs that is open (realtime.notifications)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from realtime import broadcast, notifications
from realtime.messaging import sending


class Command(BaseCommand):
    help = "Send a notification to every open socket of one user, on every worker."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username", help="Who gets it.")
        parser.add_argument(
            "text", help=f"The text to send (at most {notifications.MAX_LENGTH} characters)."
        )
        parser.add_argument("--level", choices=notifications.LEVELS, default="info")

    def handle(self, *args: Any, **options: Any) -> None:
        user = user_named(options["username"])
        try:
            sending.check_layer_reaches_other_processes()
            sent = notifications.notify(user, options["text"], level=options["level"])
        except broadcast.LayerUnavailable as exc:
            raise CommandError(f"Nothing sent. {exc}") from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Notification #{sent.pk} sent to {user.get_username()}.")


def user_named(username: str) -> Any:
    user_model = get_user_model()
    try:
        return user_model._default_manager.get_by_natural_key(username)
    except user_model.DoesNotExist:
        raise CommandError(f"No user is named {username!r}. Nothing sent.") from None
