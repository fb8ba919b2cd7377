"""Every access decision on a socket is made with its user as the database has it now (issue
25, item 1): a right revoked while the socket is open does not come back at the next
`subscribe`, although Django cached it on the user object loaded at connect. In process first,
then against `serve --workers 2` with a real sign-in."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

from realtime import topics
from realtime.messaging import topic_rules as registry
from realtime.ops import live_stats
from realtime.websocket import consumer as consumer_module
from realtime.websocket.consumer import access_now
from tests.helpers import (
    PYTHON,
    free_port,
    logged_in,
    receive_json,
    run_in_shell,
    wait_until,
    ws_connect,
)
from tests.test_authorization import opened, signed_in

LIVE = live_stats.TOPIC  # realtime.stats: active staff who may view broadcasts


@pytest.fixture(autouse=True)
def _registry():
    saved = dict(registry.registrations)
    yield
    registry.registrations.clear()
    registry.registrations.update(saved)


def staff_who_may_view_broadcasts(name: str):
    client = signed_in(name, staff=True)  # staff, not superuser: has_perm asks the database
    user = get_user_model().objects.get(username=name)
    user.user_permissions.add(Permission.objects.get(codename="view_broadcast"))
    return client, user


async def ask(socket_, message: dict) -> dict:
    await socket_.send_json_to(message)
    return await socket_.receive_json_from()


async def subscribe(socket_, topic: str) -> dict:
    return await ask(socket_, {"type": "subscribe", "topic": topic})


def kind(message: dict) -> tuple:
    return message["type"], message.get("code") or message.get("reason")


@pytest.mark.django_db(transaction=True)
def test_a_revoked_permission_does_not_come_back_at_the_next_subscribe():
    client, user = staff_who_may_view_broadcasts("gus")
    permission = Permission.objects.get(codename="view_broadcast")

    async def scenario():
        socket_ = await opened(client)
        first = await subscribe(socket_, LIVE)  # fills the user's permission cache
        await sync_to_async(user.user_permissions.remove)(permission)
        ended = await socket_.receive_json_from()
        again = await subscribe(socket_, LIVE)
        await socket_.disconnect()
        return first, ended, again

    first, ended, again = asyncio.run(scenario())
    assert first["type"] == "subscribed"
    assert ended == {"type": "unsubscribed", "topic": LIVE, "reason": "forbidden"}
    assert (again["type"], again["code"], again["topic"]) == ("error", "forbidden", LIVE)


@pytest.mark.django_db(transaction=True)
def test_a_permission_given_while_the_socket_is_open_counts_at_once():
    client = signed_in("ida", staff=True)
    user = get_user_model().objects.get(username="ida")

    async def scenario():
        socket_ = await opened(client)
        refused = await subscribe(socket_, LIVE)  # caches "no permission" on the old object
        permission = await sync_to_async(Permission.objects.get)(codename="view_broadcast")
        await sync_to_async(user.user_permissions.add)(permission)
        allowed = await subscribe(socket_, LIVE)
        await socket_.disconnect()
        return refused, allowed

    refused, allowed = asyncio.run(scenario())
    assert kind(refused) == ("error", "forbidden")
    assert allowed["type"] == "subscribed"


def is_member(user) -> bool:
    return user.is_authenticated and user.first_name == "member"


@pytest.mark.django_db(transaction=True)
def test_authorize_and_presence_see_the_user_as_stored_now_not_as_loaded_at_connect():
    # An app's checks that read state held on the user object (here: its first name).
    topics.register("club", authorize=lambda user: is_member(user))
    topics.register("lounge", authorize=lambda user: True, presence=lambda user: is_member(user))
    client = signed_in("joe")
    joe = get_user_model().objects.filter(username="joe")
    joe.update(first_name="member")

    async def scenario():
        socket_ = await opened(client)
        allowed = await subscribe(socket_, "club")
        # QuerySet.update() sends no signal, so nothing re-checks: the next decisions must.
        await sync_to_async(joe.update)(first_name="")
        refused = await subscribe(socket_, "club")
        lounge = await subscribe(socket_, "lounge")
        told_who_is_there = not await socket_.receive_nothing(0.5)
        await socket_.disconnect()
        return allowed, refused, lounge, told_who_is_there

    allowed, refused, lounge, told_who_is_there = asyncio.run(scenario())
    assert allowed["type"] == "subscribed"
    assert kind(refused) == ("error", "forbidden")
    assert lounge["type"] == "subscribed"
    assert not told_who_is_there  # its presence function no longer allows it


def delete_without_signals(username: str) -> None:
    table = get_user_model()._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE username = %s", [username])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["deactivated", "deleted"])
def test_a_user_deactivated_or_deleted_since_connect_is_refused(how):
    topics.register("members", authorize=lambda user: user.is_authenticated)
    client = signed_in("kim")
    users = get_user_model().objects.filter(username="kim")

    async def scenario():
        socket_ = await opened(client)
        before = await subscribe(socket_, "members")
        await ask(socket_, {"type": "unsubscribe", "topic": "members"})
        # Without signals (QuerySet methods), so that the socket stays open to be asked.
        if how == "deactivated":
            await sync_to_async(users.update)(is_active=False)
        else:
            await sync_to_async(delete_without_signals)("kim")
        after = await subscribe(socket_, "members")
        own = await subscribe(socket_, "user")
        await socket_.disconnect()
        return before, after, own

    before, after, own = asyncio.run(scenario())
    assert before["type"] == "subscribed"
    assert kind(after) == ("error", "forbidden")
    assert kind(own) == ("error", "forbidden")


@pytest.mark.django_db(transaction=True)
def test_the_cost_is_one_query_for_the_user_none_when_anonymous(monkeypatch):
    topics.register("open", authorize=lambda user: True)
    client, _ = staff_who_may_view_broadcasts("lou")
    counted: list[tuple[str, int]] = []

    def counting(consumer, topic):
        with CaptureQueriesContext(connection) as queries:  # in the database thread
            decided = access_now(consumer, topic)
        counted.append((topic, len(queries)))
        return decided

    monkeypatch.setattr(consumer_module, "access_now", counting)

    async def scenario():
        for who in (client, None):
            socket_ = await opened(who)
            for topic in ("open", LIVE):
                await subscribe(socket_, topic)
            await socket_.disconnect()

    asyncio.run(scenario())
    # Signed in: the user by primary key; has_perm on the fresh object then reads the user's
    # and its groups' permissions (two more). Anonymous: nothing to read.
    assert counted == [("open", 1), (LIVE, 3), ("open", 0), (LIVE, 0)]


# --- Against a real server ------------------------------------------------------------------

STAFF_WITH_PERMISSION = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
user, _ = get_user_model().objects.get_or_create(username="vera")
user.is_staff, user.is_superuser = True, False
user.set_password("pw-vera-0123456789")
user.save()
user.user_permissions.add(Permission.objects.get(codename="view_broadcast"))
"""

TAKE_IT_AWAY = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
user = get_user_model().objects.get(username="vera")
user.user_permissions.remove(Permission.objects.get(codename="view_broadcast"))
"""


async def answer_to(socket_, message: dict) -> dict:
    """The next message that is not the live view's periodic `stats`."""
    await socket_.send(json.dumps(message))
    return await next_but_stats(socket_)


async def next_but_stats(socket_) -> dict:
    while True:
        message = await receive_json(socket_, timeout=15)
        if message["type"] != "stats":
            return message


@pytest.mark.e2e
def test_a_staff_user_who_lost_the_permission_cannot_subscribe_again_on_the_same_socket(
    start, redis_server, client_tls, server_env
):
    env = {**server_env, "REDIS_URL": redis_server.url}
    run_in_shell(env, STAFF_WITH_PERMISSION)
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(serve, port, REDIS_URL=redis_server.url)
    wait_until(lambda: server.log().count(" started (pid ") >= 2, "both workers started")
    cookie = logged_in(port, client_tls, "vera", {"vera": "pw-vera-0123456789"}).cookie_header()
    subscribe_live = {"type": "subscribe", "topic": LIVE}

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            url = f"wss://localhost:{port}/ws/"
            headers = {"Cookie": cookie}
            socket_ = await stack.enter_async_context(
                ws_connect(url, client_tls, additional_headers=headers)
            )
            welcome = await receive_json(socket_)
            first = await answer_to(socket_, subscribe_live)
            await asyncio.to_thread(run_in_shell, env, TAKE_IT_AWAY)
            ended = await next_but_stats(socket_)
            again = await answer_to(socket_, subscribe_live)
            pong = await answer_to(socket_, {"type": "ping"})
            return welcome, first, ended, again, pong

    welcome, first, ended, again, pong = asyncio.run(scenario())
    assert welcome["user"] == "vera"
    assert first["type"] == "subscribed"
    assert ended == {"type": "unsubscribed", "topic": LIVE, "reason": "forbidden"}
    assert (again["type"], again["code"], again["topic"]) == ("error", "forbidden", LIVE)
    assert pong == {"type": "pong"}  # the same socket, still open
    assert "Traceback" not in server.log()
