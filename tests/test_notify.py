"""Notifications from outside app code: `manage.py notify` and the users' admin action
"Send a notification" (in-process; what a notification does is in realtime/notifications.py)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command

from realtime import admin_notify
from realtime.messaging import sending
from realtime.models import TopicMessage

USERS = "/admin/auth/user/"
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def notifications_of(user) -> list[dict]:
    rows = TopicMessage.objects.filter(topic=f"$user.{user.pk}", event="notification")
    return [row.data for row in rows.order_by("pk")]


@pytest.fixture
def reaching_layer(monkeypatch):
    """As if REDIS_URL reached the servers (the in-process layer is the in-memory one)."""
    monkeypatch.setattr(sending, "check_layer_reaches_other_processes", lambda: None)


# --- manage.py notify ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_command_notifies_the_user_and_says_which_notification(
    django_user_model, reaching_layer, capsys
):
    alice = django_user_model.objects.create_user("alice")
    call_command("notify", "alice", "Your export is ready", "--level", "success")
    [sent] = TopicMessage.objects.filter(topic=f"$user.{alice.pk}", event="notification")
    assert sent.data["text"] == "Your export is ready" and sent.data["level"] == "success"
    assert sent.offset is not None  # published once stored
    assert capsys.readouterr().out == f"Notification #{sent.pk} sent to alice.\n"


@pytest.mark.django_db
def test_the_command_refuses_an_unknown_user(reaching_layer):
    with pytest.raises(CommandError, match="No user is named 'nobody'. Nothing sent."):
        call_command("notify", "nobody", "hello")
    assert not TopicMessage.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "error"),
    [("   ", "A notification needs some text."), ("x" * 501, "at most 500 characters")],
)
def test_the_command_refuses_what_notify_refuses(django_user_model, reaching_layer, text, error):
    django_user_model.objects.create_user("alice")
    with pytest.raises(CommandError, match=error):
        call_command("notify", "alice", text)
    assert not TopicMessage.objects.exists()


@pytest.mark.django_db
def test_the_command_refuses_an_unknown_level(django_user_model, reaching_layer):
    django_user_model.objects.create_user("alice")
    with pytest.raises(CommandError, match="invalid choice: 'panic'"):
        call_command("notify", "alice", "hello", "--level", "panic")


@pytest.mark.django_db
def test_the_command_sends_nothing_when_the_layer_cannot_reach_the_servers(django_user_model):
    django_user_model.objects.create_user("alice")
    with pytest.raises(CommandError) as info:
        call_command("notify", "alice", "hello")
    assert str(info.value).startswith("Nothing sent. ")
    assert "in-memory" in str(info.value) and "REDIS_URL" in str(info.value)
    assert not TopicMessage.objects.exists()


# --- The admin action on users -------------------------------------------------------------------


@pytest.fixture
def admin_client(client, admin_user):
    # pytest-django's would sign in with the first backend, ThrottleBackend, which only refuses.
    client.force_login(admin_user, backend=MODEL_BACKEND)
    return client


@pytest.fixture
def alice_and_bob(django_user_model):
    return [django_user_model.objects.create_user(name) for name in ("alice", "bob")]


def choose_action(client, users):
    """What the users' list posts when the action is chosen for `users`."""
    form = {"action": "send_notification", "index": "0", "_selected_action": [u.pk for u in users]}
    return client.post(USERS, form, secure=True)


def apply_action(client, users, **fields: str):
    """What the action's own page posts back."""
    form = {"action": "send_notification", "apply": "1", "_selected_action": [u.pk for u in users]}
    return client.post(USERS, {**form, **fields}, secure=True)


@pytest.mark.django_db
def test_the_users_list_offers_the_action_next_to_its_own(admin_client):
    html = admin_client.get(USERS, secure=True).content.decode()
    assert '<option value="send_notification">Send a notification</option>' in html
    assert '<option value="delete_selected">' in html


@pytest.mark.django_db
def test_the_action_asks_for_the_text_and_level_on_a_page_of_its_own(admin_client, alice_and_bob):
    response = choose_action(admin_client, alice_and_bob)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<li>alice</li>" in html and "<li>bob</li>" in html
    assert '<label for="id_text" class="required">Text:</label>' in html
    assert '<label for="id_level" class="required">Level:</label>' in html
    assert 'maxlength="500"' in html and '<option value="info" selected>Info</option>' in html
    for user in alice_and_bob:
        assert f'name="_selected_action" value="{user.pk}"' in html
    assert '<input type="hidden" name="action" value="send_notification">' in html
    assert '<input type="hidden" name="apply" value="1">' in html
    assert '<input type="submit" value="Send notification" class="default">' in html
    assert f'href="{USERS}" class="closelink">Cancel</a>' in html
    assert 'class="breadcrumbs"' in html
    assert not TopicMessage.objects.exists()


@pytest.mark.django_db
def test_the_action_notifies_each_selected_user(
    admin_client, alice_and_bob, django_user_model, django_capture_on_commit_callbacks
):
    carol = django_user_model.objects.create_user("carol")
    with django_capture_on_commit_callbacks(execute=True):
        response = apply_action(admin_client, alice_and_bob, text=" Maintenance ", level="warning")
    assert response.status_code == 302 and response.url == USERS
    for user in alice_and_bob:
        [data] = notifications_of(user)
        assert (data["text"], data["level"]) == ("Maintenance", "warning")
    assert notifications_of(carol) == []
    assert TopicMessage.objects.filter(offset__isnull=True).count() == 0  # all published
    listing = admin_client.get(response.url, secure=True).content.decode()
    assert "Sent a notification to 2 user(s)." in listing


@pytest.mark.django_db
def test_the_action_shows_its_page_again_with_the_error_and_sends_nothing(
    admin_client, alice_and_bob
):
    response = apply_action(admin_client, alice_and_bob, text="  ", level="info")
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    response = apply_action(admin_client, alice_and_bob, text="x" * 501, level="info")
    assert "Ensure this value has at most 500 characters" in response.content.decode()
    assert not TopicMessage.objects.exists()


@pytest.mark.django_db
def test_staff_who_may_not_change_users_are_not_offered_the_action(
    client, django_user_model, alice_and_bob
):
    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_user"))
    client.force_login(viewer, backend=MODEL_BACKEND)
    html = client.get(USERS, secure=True).content.decode()
    assert "send_notification" not in html
    apply_action(client, alice_and_bob, text="Sneaky", level="info")
    assert not TopicMessage.objects.exists()


def test_the_action_joins_the_user_admin_a_project_registers_and_keeps_its_actions(monkeypatch):
    def own_action(modeladmin, request, queryset):
        pass

    class ProjectUserAdmin(UserAdmin):
        actions = [own_action]

    project_admin = ProjectUserAdmin(get_user_model(), admin.site)
    monkeypatch.setitem(admin.site._registry, get_user_model(), project_admin)
    for _ in range(2):  # as when this module is imported again: once all the same
        admin_notify.add_action_to_user_admin(admin_notify.send_notification)
    assert project_admin.actions == [own_action, admin_notify.send_notification]
    assert ProjectUserAdmin.actions == [own_action]


def test_a_user_admin_without_actions_stays_without(monkeypatch):
    class NoActions(UserAdmin):
        actions = None

    no_actions = NoActions(get_user_model(), admin.site)
    monkeypatch.setitem(admin.site._registry, get_user_model(), no_actions)
    admin_notify.add_action_to_user_admin(admin_notify.send_notification)
    assert no_actions.actions is None
