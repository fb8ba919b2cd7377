"""Broadcasts: messages staff, commands and app code send to every connected client."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

MAX_MESSAGE_LENGTH = 2000


class Broadcast(models.Model):
    class Level(models.TextChoices):
        INFO = "info", "Info"
        SUCCESS = "success", "Success"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    class Audience(models.TextChoices):
        EVERYONE = "everyone", "Everyone"
        AUTHENTICATED = "authenticated", "Signed-in users"
        STAFF = "staff", "Staff"

    message = models.CharField(max_length=MAX_MESSAGE_LENGTH)
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.INFO)
    audience = models.CharField(max_length=16, choices=Audience.choices, default=Audience.EVERYONE)
    sent_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Empty when sent by a command or app code.",
    )
    sent_at = models.DateTimeField(default=timezone.now, db_index=True)
    published_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was handed to the channel layer."
    )
    recipients = models.PositiveIntegerField(
        null=True, blank=True, help_text="Clients of its audience connected when it was sent."
    )

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.level}: {self.message[:60]}"

    def as_message(self) -> dict[str, object]:
        """The `broadcast` message clients receive (docs/protocol.md)."""
        return {
            "type": "broadcast",
            "id": self.pk,
            "message": self.message,
            "level": self.level,
            "audience": self.audience,
            "sent_at": self.sent_at.isoformat(),
        }
