"""Broadcasts, the streams of messages with positions that carry them and topics' messages, and
the tokens of the HTTP publish API.

A stream is a named sequence of messages (a topic, a user's own topic, or the broadcasts):
`Topic` holds its epoch and last offset, `TopicMessage` its history. Offsets are given when a
message is published, one after the other without gaps (realtime/messaging/streams.py).
"""

from __future__ import annotations

import secrets

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


def new_epoch() -> str:
    return secrets.token_hex(8)


class Topic(models.Model):
    """A stream's position: the offset its last published message got, and the epoch that
    names this history (a client resuming with another epoch must reload)."""

    name = models.CharField(max_length=200, unique=True)
    epoch = models.CharField(max_length=32, default=new_epoch)
    last_offset = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} @ {self.last_offset}"


class TopicMessage(models.Model):
    """One message of a stream: stored when sent, given its offset and frame when published."""

    topic = models.CharField(max_length=200)
    offset = models.PositiveBigIntegerField(null=True, blank=True)
    event = models.CharField(max_length=100, default="message")
    data = models.JSONField(null=True)
    # The broadcast stream's messages go to one audience only; "" for a topic's.
    audience = models.CharField(max_length=16, blank=True, default="")
    broadcast = models.OneToOneField(
        Broadcast, null=True, blank=True, on_delete=models.CASCADE, related_name="stream_message"
    )
    # The text frame every subscriber receives, built once when published.
    frame = models.TextField(blank=True, default="")
    sent_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    # A message a client published: {"from": {"id", "username"} or None, "id": its client id},
    # merged into the frame; None for one the server sent.
    origin = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["topic", "offset"], name="realtime_topic_offset")
        ]
        indexes = [models.Index(fields=["published_at"], name="realtime_msg_published")]

    def __str__(self) -> str:
        return f"{self.topic} #{self.offset}"


class PublishReceipt(models.Model):
    """That a publisher's client id was stored on a topic: a publish sent again with that id
    (its client lost the answer) is answered with this offset instead of being stored twice
    (realtime/messaging/client_publish.py). Kept REALTIME_PUBLISH_ID_TTL seconds."""

    publisher = models.CharField(max_length=80)  # "user:<pk>", or "socket:<uuid>" when anonymous
    topic = models.CharField(max_length=200)
    client_id = models.CharField(max_length=64)
    digest = models.CharField(max_length=64)  # of what the client sent: an id reused differs
    offset = models.PositiveBigIntegerField(null=True, blank=True)
    message = models.ForeignKey(
        TopicMessage, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["publisher", "topic", "client_id"], name="realtime_publish_receipt"
            )
        ]

    def __str__(self) -> str:
        return f"{self.publisher} {self.topic} {self.client_id}"


class ApiToken(models.Model):
    """A token of the HTTP publish API (realtime/api/tokens.py): its SHA-256, never the secret."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="Its first characters, to tell it apart.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"
        constraints = [
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(revoked_at__isnull=True),
                name="realtime_apitoken_active_name",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
