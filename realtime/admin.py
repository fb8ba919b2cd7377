"""The Django admin: sending a broadcast (a confirmation first when it goes to everyone), the
list of what was sent to whom, and the publish API's tokens (the secret shown once). The users'
"Send a notification" action is realtime/admin_notify.py's, installed from here."""

from __future__ import annotations

import copy
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, QueryDict
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html

from realtime import admin_notify, broadcast
from realtime.api import tokens
from realtime.messaging import audience_counts
from realtime.models import ApiToken, Broadcast
from realtime.ops import live_stats

SENDER_FIELDS = ("message", "level", "audience")
LEVEL_ICONS = {"info": "ℹ", "success": "✓", "warning": "⚠", "error": "✕"}
SHORT_MESSAGE_LENGTH = 80
CONFIRMED = "confirmed"  # posted by the "Yes, send to everyone" form
CHANGE_IT = "_change"  # posted by its "Change it" button


class MessageTextarea(forms.Textarea):
    """The message's textarea with its character count under it (admin_broadcast.js)."""

    template_name = "admin/realtime/broadcast/message_widget.html"
    count_id = "broadcast-message-count"

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        widget_attrs = context["widget"]["attrs"]
        # After what Django describes it with (its errors), not instead.
        described_by = f"{widget_attrs.get('aria-describedby', '')} {self.count_id}"
        widget_attrs["aria-describedby"] = described_by.strip()
        context["widget"]["count_id"] = self.count_id
        return context


class BroadcastForm(forms.ModelForm):
    class Meta:
        model = Broadcast
        fields = SENDER_FIELDS
        widgets = {"message": MessageTextarea(attrs={"rows": 3})}


def preview_of(level: Any, message: Any) -> dict[str, str]:
    """What the preview shows: the level in words and its icon, and the message."""
    level = level if level in LEVEL_ICONS else Broadcast.Level.INFO.value
    return {
        "level": level,
        "label": Broadcast.Level(level).label,
        "icon": LEVEL_ICONS[level],
        "message": str(message or ""),
    }


def connected_everyone() -> tuple[int | None, str]:
    """(clients connected now on all workers, "") or (None, why that is unknown)."""
    try:
        return audience_counts.counts()["everyone"], ""
    except Exception as exc:  # noqa: BLE001 - Redis down must not stop the confirmation
        return None, str(exc)


def as_add_page_filled_in(request: HttpRequest) -> HttpRequest:
    """The request as a GET of the add page whose fields start with the posted values: a form
    shown again, never saved (the admin fills an add form's initial values from GET)."""
    filled_in = copy.copy(request)
    filled_in.method = "GET"
    filled_in.GET = QueryDict(mutable=True)
    for name in SENDER_FIELDS:
        filled_in.GET[name] = request.POST.get(name, "")
    return filled_in


@admin.register(Broadcast)
class BroadcastAdmin(admin.ModelAdmin):
    form = BroadcastForm
    list_display = ("id", "short_message", "level", "audience", "sent_by", "sent_at", "recipients")
    list_display_links = ("id", "short_message")
    list_filter = ("level", "audience", "sent_at")
    search_fields = ("message",)
    readonly_fields = ("sent_by", "sent_at", "published_at", "recipients")
    save_as_continue = False

    class Media:
        css = {"all": ["realtime/admin_broadcast.css"]}
        js = ["realtime/admin_broadcast.js"]

    @admin.display(description="Message", ordering="message")
    def short_message(self, obj: Broadcast) -> str:
        if len(obj.message) <= SHORT_MESSAGE_LENGTH:
            return obj.message
        short = obj.message[:SHORT_MESSAGE_LENGTH].rstrip()
        return format_html('<span title="{}">{}…</span>', obj.message, short)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # The add form asks only what a sender chooses; the rest is recorded when it is sent.
        return SENDER_FIELDS if obj is None else super().get_fields(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A sent broadcast is history: it can be read, not edited (that would not resend it).
        return False

    def save_model(self, request: HttpRequest, obj: Broadcast, form: Any, change: bool) -> None:
        obj.sent_by = request.user
        broadcast.send_broadcast(obj)

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST" and CHANGE_IT in request.POST:
            return super().add_view(as_add_page_filled_in(request), form_url, extra_context)
        confirmation = self.confirmation_needed(request)
        if confirmation is not None:
            return confirmation
        return super().add_view(request, form_url, extra_context)

    def confirmation_needed(self, request: HttpRequest) -> HttpResponse | None:
        """The confirmation page for a valid broadcast to everyone not confirmed yet, else None
        (anything else is saved, or shown again with its errors, by the admin as usual)."""
        if request.method != "POST" or request.POST.get(CONFIRMED) == "1":
            return None
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = self.get_form(request)(request.POST)
        if not form.is_valid() or form.cleaned_data["audience"] != Broadcast.Audience.EVERYONE:
            return None
        return self.render_confirmation(request, form)

    def render_confirmation(self, request: HttpRequest, form: forms.ModelForm) -> HttpResponse:
        reach, reach_error = connected_everyone()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Send this broadcast to everyone?",
            "form": form,
            "reach": reach,
            "reach_error": reach_error,
            "preview": preview_of(form.cleaned_data["level"], form.cleaned_data["message"]),
            "media": self.media,
        }
        template = "admin/realtime/broadcast/confirm_everyone.html"
        return TemplateResponse(request, template, context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        form = context["adminform"].form
        context.update(
            show_save_and_add_another=False,
            show_save_and_continue=False,
            level_icons=LEVEL_ICONS,
            preview=preview_of(form["level"].value(), form["message"].value()) if add else None,
        )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self) -> list[Any]:
        live = self.admin_site.admin_view(self.live_view)
        return [path("live/", live, name="realtime_broadcast_live"), *super().get_urls()]

    def live_view(self, request: HttpRequest) -> HttpResponse:
        """Connections per host and worker, the messages of the last hour with their reach and
        latency, refused handshakes: rendered now, then kept live over the page's WebSocket
        (realtime/ops/live_stats.py, admin_live.mjs)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            stats, error = live_stats.snapshot(), ""
        except Exception as exc:  # noqa: BLE001 - the page must show even when Redis is down
            stats, error = {}, str(exc)
        context = {
            **self.admin_site.each_context(request),
            "title": "Live view",
            "opts": self.model._meta,
            "stats": stats,
            "error": error,
            "topic": live_stats.TOPIC,
            "interval": live_stats.interval(),
        }
        return TemplateResponse(request, "admin/realtime/live.html", context)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            connected = audience_counts.counts()
        except Exception as exc:  # noqa: BLE001 - the list must show even when Redis is down
            connected = {"error": str(exc)}
        return super().changelist_view(request, {**(extra_context or {}), "connected": connected})


class ApiTokenForm(forms.ModelForm):
    """A new token: its name and scopes, one per line (the secret is made on save). The scopes
    are checked against the rights of `creator`, whom ApiTokenAdmin.get_form sets."""

    creator: Any = None
    scopes_text = forms.CharField(
        label="Scopes",
        widget=forms.Textarea(attrs={"rows": 3}),
        initial=tokens.BROADCASTS,
        help_text=(
            "One per line: broadcasts, or topic:PATTERN (topic:orders.*). The token acts for "
            "you and carries only rights you hold: broadcasts needs the permission to add "
            "broadcasts, a topic the permission to add topic messages. It stops working for a "
            "scope when you lose that permission or your account is deactivated or deleted. "
            "The server's own topics (realtime.*) are never sent to."
        ),
    )

    class Meta:
        model = ApiToken
        fields = ("name",)

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if not tokens.NAME.fullmatch(name):
            raise forms.ValidationError("1 to 100 letters, digits, '.', '_' or '-'.")
        if ApiToken.objects.filter(name=name, revoked_at__isnull=True).exists():
            raise forms.ValidationError("An active token has this name: revoke it first.")
        return name

    def clean_scopes_text(self) -> list[str]:
        scopes = [line.strip() for line in self.cleaned_data["scopes_text"].splitlines()]
        try:
            scopes = tokens.checked_scopes([scope for scope in scopes if scope])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        beyond = tokens.scopes_beyond(self.creator, scopes)
        if beyond:
            raise forms.ValidationError(tokens.beyond_message(self.creator, beyond))
        return scopes


@admin.action(permissions=["change"], description="Revoke the selected tokens")
def revoke_tokens(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[ApiToken]
) -> None:
    revoked = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
    modeladmin.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens of the HTTP publish API: the secret is shown once, on the page after adding."""

    form = ApiTokenForm
    list_display = ("name", "prefix", "scope_list", "created_by", "created_at", "last_used_at",
                    "revoked_at")  # fmt: skip
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix")
    actions = [revoke_tokens]
    readonly_fields = ("name", "prefix", "scopes", "created_by", "created_at", "last_used_at",
                       "revoked_at")  # fmt: skip

    @admin.display(description="Scopes")
    def scope_list(self, obj: ApiToken) -> str:
        return ", ".join(obj.scopes)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ("name", "scopes_text") if obj is None else self.readonly_fields

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        # Scopes are checked against who creates the token: making tokens is not a right of
        # its own to broadcast.
        return type(form.__name__, (form,), {"creator": request.user})

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A token is not edited: it is revoked (the list's action) and another one created.
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        token, secret = tokens.create(
            form.cleaned_data["name"], form.cleaned_data["scopes_text"], created_by=request.user
        )
        obj.pk, obj.prefix, obj.scopes = token.pk, token.prefix, token.scopes
        request.api_token_secret = secret

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue: Any = None):
        # The secret on this page only: never in a message, a cookie or a log.
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Token {obj.name} created",
            "token": obj,
            "secret": request.api_token_secret,
        }
        response = TemplateResponse(request, "admin/realtime/apitoken/created.html", context)
        response["Cache-Control"] = "no-store"
        return response


# Django autodiscovers admin.py only: the users' notification action is installed from here.
admin_notify.offer_on_first_request()
