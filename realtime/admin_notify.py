"""The users' admin action "Send a notification": a page asks for the text and level, then
each selected user is notified (realtime/notifications.py). The action joins whichever admin
is registered for the user model, at the first request, when every app's admin is loaded.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.exceptions import NotRegistered
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.core.signals import request_started
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from realtime import notifications
from realtime.models import Broadcast


class NotificationForm(forms.Form):
    required_css_class = "required"  # the admin's bold labels for required fields

    text = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=notifications.MAX_LENGTH,
        help_text=f"At most {notifications.MAX_LENGTH} characters.",
    )
    level = forms.ChoiceField(
        choices=[(level, Broadcast.Level(level).label) for level in notifications.LEVELS],
        initial=Broadcast.Level.INFO.value,
    )


@admin.action(permissions=["change"], description="Send a notification")
def send_notification(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Model]
) -> HttpResponse | None:
    """Ask for the text and level on a page of its own, then notify each selected user."""
    form = NotificationForm(request.POST if "apply" in request.POST else None)
    users = list(queryset)
    if form.is_valid():
        text, level = form.cleaned_data["text"], form.cleaned_data["level"]
        with transaction.atomic():  # all of them or, if one fails, none
            for user in users:
                notifications.notify(user, text, level=level)
        modeladmin.message_user(
            request, f"Sent a notification to {len(users)} user(s).", messages.SUCCESS
        )
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": modeladmin.opts,
        "title": "Send a notification",
        "form": form,
        "users": users,
        "action_checkbox_name": ACTION_CHECKBOX_NAME,
        "media": modeladmin.media + form.media,
    }
    return TemplateResponse(request, "admin/realtime/send_notification.html", context)


def add_action_to_user_admin(action: Any) -> None:
    """Offer `action` on the admin registered for the user model, next to its own actions."""
    try:
        user_admin = admin.site.get_model_admin(get_user_model())
    except NotRegistered:
        return
    if user_admin.actions is None:  # that admin turned actions off
        return
    # By name: a second import of this module makes a new function, the same action.
    if action.__name__ in {getattr(known, "__name__", known) for known in user_admin.actions}:
        return
    # On this instance, as a new list: the class's own actions stay as they are.
    user_admin.actions = [*user_admin.actions, action]


def offer_send_notification(**_: Any) -> None:
    # Once, at the first request, when every app's admin module is loaded: realtime comes before
    # django.contrib.auth in INSTALLED_APPS (its runserver must win), and a project may register
    # (or replace) its user admin in any app, after this module.
    request_started.disconnect(dispatch_uid=OFFER_UID)
    add_action_to_user_admin(send_notification)


OFFER_UID = "realtime.admin_notify.offer_send_notification"


def offer_on_first_request() -> None:
    """Add the action to the user admin at the first request (realtime/admin.py calls this)."""
    request_started.connect(offer_send_notification, dispatch_uid=OFFER_UID)
