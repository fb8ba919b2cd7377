"""`manage.py apitoken create NAME [--scope broadcasts|topic:PATTERN ...]`, `apitoken revoke
NAME`, `apitoken list`: tokens for the HTTP publish API (realtime/api_tokens.py)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from realtime import api_tokens
from realtime.models import ApiToken


class Command(BaseCommand):
    help = "Create, revoke or list tokens of the HTTP publish API (POST /api/publish)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "action",
            choices=["create", "revoke", "list"],
            help="create NAME (the token is printed once), revoke NAME, or list (no secrets).",
        )
        parser.add_argument("name", nargs="?", help="The token's name.")
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            default=[],
            help="For create: broadcasts, or topic:PATTERN (shell-style: topic:orders.*); "
            "repeatable. Default: broadcasts.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action != "list" and not options["name"]:
            raise CommandError(f"apitoken {action} needs the token's NAME.")
        if options["scopes"] and action != "create":
            raise CommandError("--scope goes with apitoken create only.")
        getattr(self, action)(options)

    def create(self, options: dict[str, Any]) -> None:
        try:
            token, secret = api_tokens.create(options["name"], options["scopes"] or ["broadcasts"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(
            f"Token {token.name!r} ({', '.join(token.scopes)}) created. It is shown only now; "
            "store it where the service that publishes keeps its secrets:"
        )
        self.stdout.write(secret)

    def revoke(self, options: dict[str, Any]) -> None:
        if not api_tokens.revoke(options["name"]):
            raise CommandError(f"No active token is named {options['name']!r}.")
        self.stdout.write(f"Token {options['name']!r} revoked.")

    def list(self, options: dict[str, Any]) -> None:
        for token in ApiToken.objects.order_by("name", "-created_at"):
            state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
            used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
            scopes = ",".join(token.scopes)
            self.stdout.write(f"{token.name}\t{token.prefix}…\t{scopes}\t{state}\tlast used {used}")
