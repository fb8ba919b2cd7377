"""The Django admin for broadcasts: sending one sends it; the list shows who got what."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from realtime import broadcast
from realtime.broadcasting import presence
from realtime.models import Broadcast


class BroadcastForm(forms.ModelForm):
    class Meta:
        model = Broadcast
        fields = ("message", "level", "audience")
        widgets = {"message": forms.Textarea(attrs={"rows": 3})}


@admin.register(Broadcast)
class BroadcastAdmin(admin.ModelAdmin):
    form = BroadcastForm
    list_display = ("id", "message", "level", "audience", "sent_by", "sent_at", "recipients")
    list_display_links = ("id", "message")
    list_filter = ("level", "audience", "sent_at")
    search_fields = ("message",)
    readonly_fields = ("sent_by", "sent_at", "published_at", "recipients")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A sent broadcast is history: it can be read, not edited (that would not resend it).
        return False

    def save_model(self, request: HttpRequest, obj: Broadcast, form: Any, change: bool) -> None:
        obj.sent_by = request.user
        broadcast.send_broadcast(obj)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            connected = presence.counts()
        except Exception as exc:  # noqa: BLE001 - the list must show even when Redis is down
            connected = {"error": str(exc)}
        return super().changelist_view(request, {**(extra_context or {}), "connected": connected})
