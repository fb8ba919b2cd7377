"""The admin path end to end: a real login and form post over HTTPS (CSRF included) to daphne
on the Redis layer, and WSS clients that receive the broadcast by audience."""

from __future__ import annotations

import asyncio

import pytest
import redis

from tests.helpers import (
    BrowserSession,
    admin_send,
    create_user,
    daphne_tls_args,
    drain,
    free_port,
    receive_json,
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


def test_the_admin_list_shows_sender_and_recipients_and_presence(site, client_tls):
    server, _ = site
    alice = session_for(site, client_tls, "alice")
    url = f"wss://localhost:{server.port}/ws/"

    async def scenario():
        async with ws_connect(url, client_tls) as one, ws_connect(url, client_tls) as two:
            await receive_json(one)
            await receive_json(two)
            await asyncio.sleep(0.5)  # presence is written to Redis within 0.2 s of a change
            html = await asyncio.to_thread(admin_send, alice, "counted", "everyone")
            await drain(one, 0.5)
            return html

    html = asyncio.run(scenario())
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
