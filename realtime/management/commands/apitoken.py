"""`manage.py apitoken create NAME --user USERNAME [--scope broadcasts|topic:PATTERN ...]`,
`apitoken revoke NAME`, `apitoken list`: tokens for the HTTP publish API (realtime/api/tokens.py).

A token acts for the user named with --user and carries only rights that user holds, then and
at every use: shell access does not stand in for a user, or a deleted creator would leave a
token no rights could be taken from."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from realtime.api import tokens
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
            "--user",
            metavar="USERNAME",
            help="For create (required): the user the token acts for. It may carry only scopes "
            "this user holds the permission for (broadcasts: realtime.add_broadcast; topic: "
            "realtime.add_topicmessage), and stops working for one when they lose it.",
        )
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
        if (options["scopes"] or options["user"]) and action != "create":
            raise CommandError("--scope and --user go with apitoken create only.")
        getattr(self, action)(options)

    def create(self, options: dict[str, Any]) -> None:
        creator = self.creator(options["user"])
        scopes = options["scopes"] or [tokens.BROADCASTS]
        try:
            token, secret = tokens.create(options["name"], scopes, created_by=creator)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(
            f"Token {token.name!r} ({', '.join(token.scopes)}) created. It is shown only now; "
            "store it where the service that publishes keeps its secrets:"
        )
        self.stdout.write(secret)

    def creator(self, username: str | None) -> Any:
        if not username:
            raise CommandError(
                "apitoken create needs --user USERNAME: the token acts for that user and "
                "carries only rights they hold."
            )
        users = get_user_model()._default_manager
        try:
            return users.get_by_natural_key(username)
        except users.model.DoesNotExist:
            raise CommandError(f"No user is named {username!r}.") from None

    def revoke(self, options: dict[str, Any]) -> None:
        if not tokens.revoke(options["name"]):
            raise CommandError(f"No active token is named {options['name']!r}.")
        self.stdout.write(f"Token {options['name']!r} revoked.")

    def list(self, options: dict[str, Any]) -> None:
        for token in ApiToken.objects.select_related("created_by").order_by("name", "-created_at"):
            state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
            used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
            scopes = ",".join(token.scopes)
            creator = token.created_by or "no user (refused)"
            self.stdout.write(
                f"{token.name}\t{token.prefix}…\t{scopes}\tfor {creator}\t{state}\tlast used {used}"
            )
