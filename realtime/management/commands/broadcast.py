"""`manage.py broadcast "text" [--level L] [--audience A]`: send from a shell, cron or deploy."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from realtime import broadcast
from realtime.messaging import sending
from realtime.models import Broadcast


class Command(BaseCommand):
    help = "Send a broadcast to every connected client of an audience, on every worker."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("message", help="The text to send.")
        parser.add_argument("--level", choices=Broadcast.Level.values, default="info")
        parser.add_argument("--audience", choices=Broadcast.Audience.values, default="everyone")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            sending.check_layer_reaches_other_processes()
            sent = broadcast.send(
                options["message"], level=options["level"], audience=options["audience"]
            )
        except broadcast.LayerUnavailable as exc:
            raise CommandError(f"Nothing sent. {exc}") from None
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        if sent.published_at is None:
            raise CommandError(
                f"Broadcast #{sent.pk} is stored but could not be published: the channel layer "
                "failed (see the error above)."
            )
        self.stdout.write(
            f"Broadcast #{sent.pk} sent to {sent.audience} "
            f"({sent.recipients} connected client(s) at that moment)."
        )
