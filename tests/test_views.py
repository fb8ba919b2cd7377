"""The page at / (rendered in-process; the real servers serve it in test_server.py)."""

from __future__ import annotations

import pytest

from realtime import broadcast, notifications, topics

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
