"""The example chat's pages, rendered in process (project/demo: views, chat, templates): who may
open them, the room names, and a room's history with the position its socket resumes from.
The chat in a browser: tests/test_chat_browser.py."""

from __future__ import annotations

import re

import pytest

from project.demo import chat
from realtime import topics
from realtime.messaging import client_publish, streams

pytestmark = pytest.mark.django_db(transaction=True)
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


@pytest.fixture
def alice(client, django_user_model):
    user = django_user_model.objects.create_user("alice")
    client.force_login(user, MODEL_BACKEND)
    return user


def said(user, room: str, text: str, client_id: str) -> int:
    """What a client's publish does: the topic's publish() function, stored with a receipt."""
    topic = chat.topic_of(room)
    data = client_publish.accept(user, topic, {"text": text}, "message")
    publisher = client_publish.publisher_of(user, "socket-1")
    sent = client_publish.digest(topic, {"text": text}, "message")
    return client_publish.store_new(publisher, topic, client_id, sent, data, "message").offset


def test_both_pages_send_a_visitor_to_sign_in_first(client):
    for path in ("/chat/", "/chat/lobby/"):
        response = client.get(path, secure=True)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={path}"


def test_the_rooms_page_offers_the_suggested_rooms_and_those_with_messages(client, alice):
    said(alice, "book-club", "hello", "a1")
    topics.send("chat.staff", {"text": "staff only"})
    html = client.get("/chat/", secure=True).content.decode()
    rooms = re.findall(r'href="/chat/([\w-]+)/"', html)
    assert rooms == ["book-club", "lobby", "random"]  # not "staff": alice is not staff
    assert '<label for="room">Room name</label>' in html


def test_a_typed_room_name_opens_that_room_and_one_without_letters_is_refused_in_words(
    client, alice
):
    response = client.get("/chat/", {"room": "  Book Club! "}, secure=True)
    assert response.status_code == 302 and response["Location"] == "/chat/book-club/"
    response = client.get("/chat/", {"room": "!!!"}, secure=True)
    assert response.status_code == 400
    html = response.content.decode()
    assert "A room name needs at least one letter or digit." in html
    assert 'aria-invalid="true"' in html and 'value="!!!"' in html


def test_the_staff_room_is_refused_to_others_and_open_to_staff(client, alice, django_user_model):
    response = client.get("/chat/staff/", secure=True)
    assert response.status_code == 403
    assert "is for staff only" in response.content.decode()
    client.force_login(django_user_model.objects.create_user("stan", is_staff=True), MODEL_BACKEND)
    assert client.get("/chat/staff/", secure=True).status_code == 200
    assert client.get("/chat/" + "x" * 51 + "/", secure=True).status_code == 404


def test_a_room_lists_its_latest_messages_oldest_first_with_the_position_after_them(
    client, alice, django_user_model
):
    bob = django_user_model.objects.create_user("bob")
    for n in range(chat.HISTORY_SHOWN + 2):
        said(bob if n % 2 else alice, "lobby", f"message <{n}>", f"m{n}")
    html = client.get("/chat/lobby/", secure=True).content.decode()
    epoch, offset = streams.position("chat.lobby")
    assert f'data-epoch="{epoch}" data-offset="{offset}"' in html
    assert 'data-topic="chat.lobby"' in html and "demo/chat.mjs" in html
    offsets = [int(o) for o in re.findall(r'<li class="msg[^"]*" data-offset="(\d+)"', html)]
    assert offsets == list(range(offset - chat.HISTORY_SHOWN + 1, offset + 1))
    assert "message &lt;51&gt;" in html and "message <51>" not in html  # escaped
    assert html.count('class="msg mine"') == chat.HISTORY_SHOWN // 2  # alice's own
    assert 'data-id="m51"' in html
    assert 'role="log" aria-live="polite"' in html and '<label for="message">' in html


def test_the_history_stops_at_the_position_it_read(alice, monkeypatch):
    """A message published after the position was read is left to the socket's replay."""
    said(alice, "lobby", "before", "b1")
    said(alice, "lobby", "in between", "b2")  # published after the position below was read
    epoch, _ = streams.position("chat.lobby")
    monkeypatch.setattr(streams, "position", lambda name: (epoch, 1))
    history = chat.history("lobby")
    assert [m["text"] for m in history.messages] == ["before"]
    assert (history.epoch, history.offset) == (epoch, 1)


def test_an_empty_room_starts_from_offset_0_of_its_epoch(client, alice):
    html = client.get("/chat/quiet/", secure=True).content.decode()
    assert f'data-epoch="{streams.initial_epoch("chat.quiet")}" data-offset="0"' in html
    assert "No messages yet." in html


def test_a_message_the_server_sent_to_a_room_is_listed_as_an_announcement(client, alice):
    topics.send("chat.lobby", {"text": "Server restart at 18:00"})
    topics.send("chat.lobby", {"other": 1})
    html = client.get("/chat/lobby/", secure=True).content.decode()
    assert "Announcement" in html and "Server restart at 18:00" in html
    assert "{&quot;other&quot;: 1}" in html
