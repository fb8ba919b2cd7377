"""The page at / (rendered in-process; the real servers serve it in test_server.py)."""

from __future__ import annotations

import pytest

from realtime import broadcast, notifications, topics
from realtime.messaging import streams
from realtime.models import Topic

pytestmark = pytest.mark.django_db(transaction=True)
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def test_it_shows_the_connection_state_element(client):
    response = client.get("/", secure=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="connection"' in html
    assert 'data-state="connecting"' in html
    assert "realtime/page.mjs" in html
    assert 'data-ws-path="/ws/"' in html


def test_it_lists_the_last_broadcasts_of_the_visitors_audience(client):
    for n in range(7):
        broadcast.send(f"note {n}")
    broadcast.send("staff only", audience="staff")
    html = client.get("/", secure=True).content.decode()
    assert "note 6" in html and "note 2" in html
    assert "note 1" not in html  # only the last five
    assert "staff only" not in html
    assert html.index("note 6") < html.index("note 5")  # newest first


def test_panels_by_who_is_looking_anonymous_signed_in_and_staff(client, django_user_model):
    html = client.get("/", secure=True).content.decode()
    assert 'id="notifications"' not in html and 'id="online"' not in html
    assert "data-online-topic" not in html and "data-user-epoch" not in html

    client.force_login(django_user_model.objects.create_user("ursula"), MODEL_BACKEND)
    html = client.get("/", secure=True).content.decode()
    assert 'id="notifications"' in html and "Nothing for you yet." in html
    assert 'data-online-topic="realtime.online"' in html  # counted in ...
    assert 'id="online"' not in html  # ... but not shown who else is there

    client.force_login(django_user_model.objects.create_user("stan", is_staff=True), MODEL_BACKEND)
    html = client.get("/", secure=True).content.decode()
    assert "Who's online" in html and 'id="online"' in html


def test_a_users_latest_notifications_are_listed_newest_first_with_the_position_after_them(
    client, django_user_model
):
    user = django_user_model.objects.create_user("nina")
    other = django_user_model.objects.create_user("otto")
    notifications.notify(user, "first")
    notifications.notify(user, "second <b>bold</b>", level="warning")
    notifications.notify(other, "not nina's")
    topics.send_to_user(user, {"order": 42})
    client.force_login(user, MODEL_BACKEND)
    html = client.get("/", secure=True).content.decode()
    assert (
        html.index("{&quot;order&quot;: 42}") < html.index("second &lt;b&gt;") < html.index("first")
    )
    assert "not nina" not in html
    assert 'data-level="warning"' in html and ">Warning</p>" in html
    assert 'data-user-offset="3"' in html  # its socket resumes after the three listed
    assert html.count('<time class="sent-at"') == 3  # the app's message: when it was published


@pytest.mark.parametrize(
    "text, level, says",
    [
        ("  ", "info", "needs some text"),
        ("x" * 501, "info", "at most 500"),
        ("hi", "loud", "level"),
    ],
)
def test_notify_refuses_with_a_clear_message(django_user_model, text, level, says):
    user = django_user_model.objects.create_user("vera")
    with pytest.raises(ValueError, match=says):
        notifications.notify(user, text, level=level)


def test_a_notification_sent_while_the_page_renders_is_after_its_position(
    client, django_user_model, monkeypatch
):
    """The position is read before the list: one sent in between is listed and also past the
    position (the page keys them by offset: shown once), never missed."""
    user = django_user_model.objects.create_user("rita")
    notifications.notify(user, "before")
    recent = notifications.recent

    def recent_after_another_one(*args, **kwargs):
        notifications.notify(user, "while rendering")
        return recent(*args, **kwargs)

    monkeypatch.setattr(notifications, "recent", recent_after_another_one)
    client.force_login(user, MODEL_BACKEND)
    html = client.get("/", secure=True).content.decode()
    assert 'data-user-offset="1"' in html
    assert 'data-offset="2"' in html and "while rendering" in html


def test_positions_and_ids_are_never_localised(client, django_user_model, settings):
    settings.USE_THOUSAND_SEPARATOR = True
    user = django_user_model.objects.create_user("lou")
    Topic.objects.create(name=streams.user_stream(user.pk), last_offset=1234)
    Topic.objects.create(name=streams.BROADCASTS, last_offset=5678)
    client.force_login(user, MODEL_BACKEND)
    html = client.get("/", secure=True).content.decode()
    assert 'data-user-offset="1234"' in html and 'data-broadcasts-offset="5678"' in html
