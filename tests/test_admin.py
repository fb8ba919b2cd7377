"""The broadcast admin. End to end: a real login and form post over HTTPS (CSRF included) to
daphne on the Redis layer, and WSS clients that receive the broadcast by audience. In-process:
the add form, the confirmation before a broadcast to everyone, the read-only sent broadcast and
the list."""

from __future__ import annotations

import asyncio

import pytest
import redis

from realtime.messaging import audience_counts
from realtime.models import Broadcast
from tests.helpers import (
    BrowserSession,
    clients_in_presence,
    create_user,
    daphne_tls_args,
    drain,
    free_port,
    receive_json,
    wait_until_async,
    ws_connect,
)


@pytest.fixture(scope="module")
def site(start, dev_certs, redis_server, server_env):
    alice = create_user(server_env, "alice", staff=True)
    bob = create_user(server_env, "bob", staff=False)
    # The session's Redis may still hold the presence of a worker another module killed (it
    # expires after 15 s); this module counts its own sockets only.
    redis.Redis.from_url(redis_server.url).flushdb()
    port = free_port()
    server = start(daphne_tls_args(port, dev_certs), port, REDIS_URL=redis_server.url)
    return server, {"alice": alice, "bob": bob}


def session_for(site, client_tls, username: str | None) -> BrowserSession:
    server, passwords = site
    session = BrowserSession(f"https://localhost:{server.port}", client_tls)
    if username:
        session.login(username, passwords[username])
    return session


def admin_send(session: BrowserSession, message: str, audience: str, confirmed: bool = True) -> str:
    """Post the add form (a broadcast to everyone confirmed, unless `confirmed` is False)."""
    fields = {"message": message, "level": "success", "audience": audience}
    status, html = session.post_form(
        "/admin/realtime/broadcast/add/", {**fields, **({"confirmed": "1"} if confirmed else {})}
    )
    assert status == 200, html
    return html


def test_admin_broadcasts_reach_each_audience_and_nobody_else(site, client_tls):
    server, _ = site
    alice = session_for(site, client_tls, "alice")
    bob = session_for(site, client_tls, "bob")
    url = f"wss://localhost:{server.port}/ws/"

    async def scenario():
        async with (
            ws_connect(url, client_tls) as anonymous,
            ws_connect(url, client_tls, additional_headers={"Cookie": bob.cookie_header()}) as user,
            ws_connect(
                url, client_tls, additional_headers={"Cookie": alice.cookie_header()}
            ) as staff,
        ):
            welcomes = [await receive_json(s) for s in (anonymous, user, staff)]
            for audience in ("staff", "authenticated", "everyone", "everyone"):
                await asyncio.to_thread(admin_send, alice, f"to {audience}", audience)
            seen = [[m["message"] for m in await drain(s)] for s in (anonymous, user, staff)]
            return welcomes, seen

    welcomes, (anonymous, user, staff) = asyncio.run(scenario())
    assert [w["user"] for w in welcomes] == [None, "bob", "alice"]
    assert anonymous == ["to everyone", "to everyone"]
    assert user == ["to authenticated", "to everyone", "to everyone"]
    assert staff == ["to staff", "to authenticated", "to everyone", "to everyone"]


def test_the_admin_list_shows_sender_and_recipients_and_presence(site, client_tls, redis_server):
    server, _ = site
    alice = session_for(site, client_tls, "alice")
    url = f"wss://localhost:{server.port}/ws/"
    counted = redis.Redis.from_url(redis_server.url)

    async def scenario():
        async with ws_connect(url, client_tls) as one, ws_connect(url, client_tls) as two:
            await receive_json(one)
            await receive_json(two)
            await wait_until_async(lambda: clients_in_presence(counted) == 2, 10, "presence")
            asked = await asyncio.to_thread(admin_send, alice, "counted", "everyone", False)
            html = await asyncio.to_thread(admin_send, alice, "counted", "everyone")
            await drain(one, 0.5)
            return asked, html

    asked, html = asyncio.run(scenario())
    counted.close()
    assert "This broadcast will reach every connected client: 2 now." in asked
    status, listing = alice.request("/admin/realtime/broadcast/")
    assert status == 200
    row = listing.split("counted", 1)[1].split("</tr>", 1)[0]
    assert "alice" in row
    assert '<td class="field-recipients">2</td>' in row
    assert 'id="presence"' in html


def test_a_signed_in_user_who_is_not_staff_cannot_broadcast(site, client_tls):
    bob = session_for(site, client_tls, "bob")
    status, html = bob.request("/admin/realtime/broadcast/add/")
    # Signed in, and sent to the admin's login form all the same.
    assert status == 200
    assert "You are authenticated as bob, but are not authorized to access this page" in html


# --- In-process: the add form, the confirmation, a sent broadcast, the list ---------------------

ADD = "/admin/realtime/broadcast/add/"
LIST = "/admin/realtime/broadcast/"
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


@pytest.fixture
def admin_client(client, admin_user):
    # pytest-django's would sign in with the first backend, ThrottleBackend, which only refuses.
    client.force_login(admin_user, backend=MODEL_BACKEND)
    return client


def post_add(client, **fields: str):
    return client.post(ADD, {"level": "info", "audience": "everyone", **fields}, secure=True)


@pytest.mark.django_db
def test_the_add_form_asks_only_what_a_sender_chooses_and_has_one_send_button(admin_client):
    html = admin_client.get(ADD, secure=True).content.decode()
    for name in ("message", "level", "audience"):
        assert f'name="{name}"' in html
    for recorded in ("sent_by", "sent_at", "published_at", "recipients"):
        assert f"field-{recorded}" not in html
    form = html.split('id="broadcast_form"', 1)[1].split("</form>", 1)[0]
    assert form.count('type="submit"') == 1
    assert '<input type="submit" value="Send broadcast" class="default" name="_save">' in form
    assert 'name="_addanother"' not in html and 'name="_continue"' not in html


@pytest.mark.django_db
def test_the_message_has_a_character_count_and_the_form_a_preview_kept_by_a_script(admin_client):
    html = admin_client.get(ADD, secure=True).content.decode()
    assert 'aria-describedby="broadcast-message-count"' in html
    count = html.split('id="broadcast-message-count"', 1)[1].split("</div>", 1)[0]
    assert "0 / 2000 characters" in count
    assert "aria-live" not in html.split('id="broadcast-preview"', 1)[0].split("<textarea", 1)[1]
    assert 'id="broadcast-preview"' in html and 'aria-hidden="true">ℹ</span>' in html
    assert 'id="broadcast-level-icons" type="application/json"' in html
    assert "realtime/admin_broadcast.js" in html and "realtime/admin_broadcast.css" in html
    assert "<script>" not in html and " style=" not in html  # the CSP allows neither


@pytest.mark.django_db
def test_a_broadcast_to_another_audience_is_sent_at_once(admin_client, admin_user):
    response = post_add(admin_client, message="Staff meeting", audience="staff")
    assert response.status_code == 302 and response.url == LIST
    sent = Broadcast.objects.get()
    assert (sent.message, sent.audience, sent.sent_by) == ("Staff meeting", "staff", admin_user)


@pytest.mark.django_db
def test_a_broadcast_to_everyone_asks_first_with_the_clients_it_reaches(admin_client, monkeypatch):
    monkeypatch.setattr(audience_counts, "counts", lambda: {"everyone": 12})
    response = post_add(admin_client, message="Deploy <at> 18:00", level="warning")
    assert response.status_code == 200
    assert not Broadcast.objects.exists()
    html = response.content.decode()
    assert "This broadcast will reach every connected client: 12 now." in html
    assert 'aria-hidden="true">⚠</span>' in html and "<strong" in html and "Warning" in html
    assert "Deploy &lt;at&gt; 18:00" in html
    assert '<input type="hidden" name="confirmed" value="1">' in html
    assert 'name="message" value="Deploy &lt;at&gt; 18:00"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'value="Yes, send to everyone" class="default" name="_save"' in html
    assert 'value="Change it" name="_change"' in html


@pytest.mark.django_db
def test_the_confirmation_says_when_the_number_of_clients_is_unknown(admin_client, monkeypatch):
    def redis_down():
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(audience_counts, "counts", redis_down)
    html = post_add(admin_client, message="Hello").content.decode()
    assert "how many are connected now is unknown (Connection refused)" in html
    assert not Broadcast.objects.exists()


@pytest.mark.django_db
def test_a_confirmed_broadcast_to_everyone_is_sent(admin_client):
    response = post_add(admin_client, message="Hello, everyone", confirmed="1", _save="1")
    assert response.status_code == 302 and response.url == LIST
    assert Broadcast.objects.get().audience == "everyone"
    listing = admin_client.get(response.url, secure=True).content.decode()
    assert "was added successfully" in listing


@pytest.mark.django_db
def test_change_it_shows_the_add_form_again_filled_in_and_sends_nothing(admin_client):
    response = post_add(admin_client, message="Almost right", level="error", _change="Change it")
    assert response.status_code == 200
    assert not Broadcast.objects.exists()
    html = response.content.decode()
    assert "Send broadcast" in html and "reach every connected client" not in html
    assert "\nAlmost right</textarea>" in html
    assert '<option value="error" selected>' in html


@pytest.mark.django_db
def test_an_invalid_broadcast_to_everyone_shows_its_errors_not_the_confirmation(admin_client):
    response = post_add(admin_client, message="   ")
    html = response.content.decode()
    assert response.status_code == 200 and "This field is required." in html
    assert 'aria-describedby="id_message_error broadcast-message-count"' in html
    assert "reach every connected client" not in html
    assert not Broadcast.objects.exists()


@pytest.mark.django_db
def test_a_sent_broadcast_can_be_read_not_edited(admin_client):
    sent = Broadcast.objects.create(message="Already out", audience="staff")
    response = admin_client.get(f"{LIST}{sent.pk}/change/", secure=True)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Already out" in html
    assert "<textarea" not in html and 'name="message"' not in html
    form = html.split('id="broadcast_form"', 1)[1].split("</form>", 1)[0]
    assert 'name="_save"' not in form and 'type="submit"' not in form
    assert "field-sent_at" in html and "field-recipients" in html


@pytest.mark.django_db
def test_the_list_shortens_long_messages_and_keeps_the_whole_text_in_a_title(admin_client):
    long = "A <long> message " + "x" * 100
    sent = Broadcast.objects.create(message=long)
    Broadcast.objects.create(message="Short one")
    html = admin_client.get(LIST, secure=True).content.decode()
    shown = long[:80].rstrip().replace("<", "&lt;").replace(">", "&gt;")
    escaped = long.replace("<", "&lt;").replace(">", "&gt;")
    assert f'<span title="{escaped}">{shown}…</span>' in html
    assert f'href="/admin/realtime/broadcast/{sent.pk}/change/"' in html
    assert "Short one</a>" in html
    assert "<long>" not in html
