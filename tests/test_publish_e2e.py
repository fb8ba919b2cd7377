"""Clients publishing to topics, on `serve --workers 2` with a private Redis, real logins and
real WSS clients: a chat message reaches the room on both workers with who sent it and is
replayed like a server's; the same id sent again after a dropped answer is stored once, even
past a worker; an id reused for other data, a rejected or forbidden publish (rights read now,
not at connect), the rate per publisher over both workers, ephemeral messages (live only,
not back to the sender), and a client id remembered only for REALTIME_PUBLISH_ID_TTL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import pytest

from tests.helpers import (
    PYTHON,
    create_users,
    drain,
    free_port,
    logged_in,
    open_on_both_workers,
    receive_json,
    run_in_shell,
    server_query,
    wait_until,
    ws_connect,
)

STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")
ID_TTL = 4  # seconds a client id is remembered here (REALTIME_PUBLISH_ID_TTL)
PUBLISH_BURST = 10


@pytest.fixture(scope="module")
def users(server_env):
    return create_users(server_env, {"alice": True, "bob": False, "carol": True})


@pytest.fixture(scope="module")
def served(start, redis_server, users):
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(
        serve,
        port,
        REDIS_URL=redis_server.url,
        REALTIME_PUBLISH_ID_TTL=str(ID_TTL),
        REALTIME_TOPIC_PUBLISH_RATE="5",
        REALTIME_TOPIC_PUBLISH_BURST=str(PUBLISH_BURST),
        # The socket's own budget out of the way: this module measures the topic's.
        REALTIME_WS_RATE="2000",
        REALTIME_WS_BURST="2000",
    )
    wait_until(lambda: len(STARTED.findall(server.log())) >= 2, "both workers started")
    return server


def url_of(served) -> str:
    return f"wss://localhost:{served.port}/ws/"


def cookie(served, client_tls, users, name: str) -> str:
    return logged_in(served.port, client_tls, name, users).cookie_header()


def connect(served, client_tls, cookie_: str = ""):
    headers = {"Cookie": cookie_} if cookie_ else {}
    return ws_connect(url_of(served), client_tls, additional_headers=headers)


async def send(socket_, message: dict) -> None:
    await socket_.send(json.dumps(message))


async def until(socket_, kind: str, timeout: float = 10) -> dict:
    """The next message of type `kind` on a socket (others before it are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        message = await receive_json(socket_, max(0.1, deadline - time.monotonic()))
        if message["type"] == kind:
            return message


async def both(socket_, *kinds: str, timeout: float = 10) -> dict[str, dict]:
    """The next message of each of `kinds`, in whatever order they come (a publisher's own
    `message` may come before or after its `published`)."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(kinds):
        message = await receive_json(socket_, max(0.1, deadline - time.monotonic()))
        if message["type"] in kinds:
            found.setdefault(message["type"], message)
    return found


async def joined(socket_, topic: str, since: dict | None = None) -> dict:
    await send(
        socket_, {"type": "subscribe", "topic": topic, **({"since": since} if since else {})}
    )
    return await until(socket_, "subscribed")


def stored(env: dict, topic: str) -> list[tuple]:
    return server_query(
        env,
        'SELECT "offset", origin FROM realtime_topicmessage WHERE topic = %s ORDER BY id',
        (topic,),
    )


def test_a_chat_message_reaches_the_room_on_both_workers_with_its_sender_and_is_replayed(
    served, client_tls, users, server_env
):
    alice, bob = (cookie(served, client_tls, users, name) for name in ("alice", "bob"))

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            room = await open_on_both_workers(url_of(served), client_tls, stack, bob)
            for socket_, _ in room:
                await joined(socket_, "chat.pe-lobby")
            sender = await stack.enter_async_context(connect(served, client_tls, alice))
            welcome = await receive_json(sender)
            subscribed = await joined(sender, "chat.pe-lobby")
            message = {"type": "publish", "topic": "chat.pe-lobby", "data": {"text": "  hi  "}}
            await send(sender, {**message, "id": "m-1"})
            got = await both(sender, "published", "message")
            answer, own = got["published"], got["message"]
            heard = [await until(socket_, "message") for socket_, _ in room]
            late = await stack.enter_async_context(connect(served, client_tls, bob))
            await receive_json(late)
            since = {"epoch": subscribed["epoch"], "offset": subscribed["offset"]}
            await joined(late, "chat.pe-lobby", since)
            replayed = await until(late, "message")
            return welcome, answer, own, heard, replayed, {w for _, w in room}

    welcome, answer, own, heard, replayed, workers = asyncio.run(scenario())
    assert workers == {"w1", "w2"}
    assert answer == {"type": "published", "topic": "chat.pe-lobby", "id": "m-1", "offset": 1}
    for got in [own, *heard, replayed]:
        assert got["type"] == "message" and got["topic"] == "chat.pe-lobby"
        assert got["data"] == {"text": "hi"}  # as the topic's publish() made it
        assert got["offset"] == 1 and got["id"] == "m-1"
        assert got["from"]["username"] == "alice"
    assert own == heard[0] == replayed
    assert welcome["user"] == "alice"


def test_the_same_id_after_a_dropped_answer_is_stored_once_and_answered_with_its_offset(
    served, client_tls, users, server_env
):
    alice, bob = (cookie(served, client_tls, users, name) for name in ("alice", "bob"))
    publish = {"type": "publish", "topic": "chat.pe-retry", "id": "r-1", "data": {"text": "once"}}

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            room = await open_on_both_workers(url_of(served), client_tls, stack, bob)
            for socket_, _ in room:
                await joined(socket_, "chat.pe-retry")
            # The network drops before `published` arrives: the client never reads it.
            async with connect(served, client_tls, alice) as first:
                await receive_json(first)
                await send(first, publish)
                heard = [await until(socket_, "message") for socket_, _ in room]
            answers = []
            for _ in range(4):  # reconnected, on whichever worker: sent again, same id
                async with connect(served, client_tls, alice) as again:
                    await receive_json(again)
                    await send(again, publish)
                    answers.append(await until(again, "published"))
            reused = await stack.enter_async_context(connect(served, client_tls, alice))
            await receive_json(reused)
            await send(reused, {**publish, "data": {"text": "something else"}})
            error = await until(reused, "error")
            more = [await drain(socket_, 1.0) for socket_, _ in room]
            return heard, answers, error, more

    heard, answers, error, more = asyncio.run(scenario())
    offset = heard[0]["offset"]
    assert {m["offset"] for m in heard} == {offset} and heard[0]["id"] == "r-1"
    assert (
        answers
        == [{"type": "published", "topic": "chat.pe-retry", "id": "r-1", "offset": offset}] * 4
    )
    assert (
        error["code"] == "id_reused" and error["id"] == "r-1" and error["topic"] == "chat.pe-retry"
    )
    assert more == [[]] * len(more)  # nobody heard it twice, nor the reused id's data
    assert len(stored(server_env, "chat.pe-retry")) == 1


def test_refusals_say_why_and_name_the_publish(served, client_tls, users, server_env, redis_server):
    bob, carol = (cookie(served, client_tls, users, name) for name in ("bob", "carol"))

    async def scenario():
        async with (
            connect(served, client_tls, bob) as b,
            connect(served, client_tls, carol) as c,
            connect(served, client_tls) as anonymous,
        ):
            for socket_ in (b, c, anonymous):
                await receive_json(socket_)
            answers = {}
            for name, socket_, message in [
                ("empty", b, {"topic": "chat.pe-lobby", "id": "e", "data": {"text": " "}}),
                ("no publish", b, {"topic": "news.sport", "id": "n", "data": "goal"}),
                ("not staff", b, {"topic": "chat.staff", "id": "s", "data": {"text": "hi"}}),
                (
                    "anonymous",
                    anonymous,
                    {"topic": "chat.pe-lobby", "id": "a", "data": {"text": "x"}},
                ),
                ("bad id", b, {"topic": "chat.pe-lobby", "id": "no spaces", "data": {"text": "x"}}),
                ("no id", b, {"topic": "chat.pe-lobby", "data": {"text": "x"}}),
                ("unknown", b, {"topic": "nothing.here", "id": "u", "data": 1}),
                ("user topic", b, {"topic": "user", "id": "u2", "data": 1}),
                ("huge", b, {"topic": "wall", "id": "h", "data": "x" * 300}),
                ("staff ok", c, {"topic": "chat.staff", "id": "ok", "data": {"text": "hi"}}),
            ]:
                await send(socket_, {"type": "publish", **message})
                answers[name] = await receive_json(socket_)
            # Carol's staff rights go in another process, without a signal (QuerySet.update:
            # nothing re-checks, nothing signs her out): her open socket's next publish must
            # be judged by the rights she has now, not by the user loaded at connect.
            code = (
                "from django.contrib.auth import get_user_model\n"
                "get_user_model().objects.filter(username='carol').update(is_staff=False)"
            )
            await asyncio.to_thread(run_in_shell, server_env, code)
            await send(
                c, {"type": "publish", "topic": "chat.staff", "id": "late", "data": {"text": "x"}}
            )
            answers["after demotion"] = await until(c, "error")
            return answers

    answers = asyncio.run(scenario())
    codes = {name: answer.get("code", answer["type"]) for name, answer in answers.items()}
    assert codes == {
        "empty": "rejected",
        "no publish": "forbidden",
        "not staff": "forbidden",
        "anonymous": "forbidden",
        "bad id": "invalid_publish",
        "no id": "invalid_publish",
        "unknown": "forbidden",
        "user topic": "forbidden",
        "huge": "rejected",
        "staff ok": "published",
        "after demotion": "forbidden",
    }
    assert answers["empty"]["detail"] == "A message needs some text."
    assert answers["empty"]["id"] == "e" and answers["empty"]["topic"] == "chat.pe-lobby"
    # Nothing stored after carol's allowed message (other modules may have used the room).
    assert [offset for offset, _ in stored(server_env, "chat.staff")][-1] == (
        answers["staff ok"]["offset"]
    )


def test_an_anonymous_publish_where_a_topic_allows_it_comes_from_nobody(served, client_tls):
    async def scenario():
        async with connect(served, client_tls) as reader, connect(served, client_tls) as writer:
            await receive_json(reader), await receive_json(writer)
            await joined(reader, "wall")
            await send(writer, {"type": "publish", "topic": "wall", "id": "w", "data": "hello"})
            return await until(writer, "published"), await until(reader, "message")

    answer, message = asyncio.run(scenario())
    assert answer["offset"] == message["offset"]
    assert message["from"] is None and message["data"] == "hello" and message["id"] == "w"


def test_a_publisher_gets_its_burst_per_topic_over_both_workers_then_rate_limited(
    served, client_tls, users, server_env
):
    bob = cookie(served, client_tls, users, "bob")

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            sockets = await open_on_both_workers(url_of(served), client_tls, stack, bob)
            answers = []
            for index in range(500):  # a flood, from bob's sockets on both workers
                socket_, _ = sockets[index % len(sockets)]
                message = {"type": "publish", "topic": "chat.pe-flood", "id": f"f{index}"}
                await send(socket_, {**message, "data": {"text": str(index)}})
            for socket_, _ in sockets:
                answers += await drain(socket_, 2.0)
            return answers

    started = time.monotonic()
    answers = asyncio.run(scenario())
    elapsed = time.monotonic() - started
    published = [a for a in answers if a["type"] == "published"]
    limited = [a for a in answers if a.get("code") == "rate_limited"]
    assert len(published) + len(limited) == 500
    # A window of burst / rate seconds allows the burst: at most one more window per 2 s.
    assert PUBLISH_BURST <= len(published) <= PUBLISH_BURST * (2 + elapsed / 2)
    assert len(stored(server_env, "chat.pe-flood")) == len(published)


def test_ephemeral_messages_go_live_to_others_only_and_are_never_stored_or_replayed(
    served, client_tls, users, server_env, redis_server
):
    alice, bob = (cookie(served, client_tls, users, name) for name in ("alice", "bob"))

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            room = await open_on_both_workers(url_of(served), client_tls, stack, bob)
            for socket_, _ in room:
                first = await joined(socket_, "chat.pe-typing")
            typer = await stack.enter_async_context(connect(served, client_tls, alice))
            await receive_json(typer)
            await joined(typer, "chat.pe-typing")
            typing = {
                "type": "publish",
                "topic": "chat.pe-typing",
                "ephemeral": True,
                "event": "typing",
            }
            await send(typer, {**typing, "data": {"text": "…"}, "id": "t1"})
            answer = await until(typer, "published")
            await send(typer, {**typing, "data": {"text": "…"}})  # no id: no answer
            heard = [[await until(s, "message"), await until(s, "message")] for s, _ in room]
            code = (
                "from realtime import topics\n"
                "topics.send('chat.pe-typing', {'text': 'server'}, ephemeral=True)"
            )
            await asyncio.to_thread(
                run_in_shell, {**server_env, "REDIS_URL": redis_server.url}, code
            )
            from_server = [await until(s, "message") for s, _ in room]
            echo = await drain(typer, 1.0)
            late = await stack.enter_async_context(connect(served, client_tls, bob))
            await receive_json(late)
            since = {"epoch": first["epoch"], "offset": 0}
            await joined(late, "chat.pe-typing", since)
            replayed = await drain(late, 1.0)
            return answer, heard, from_server, echo, replayed

    answer, heard, from_server, echo, replayed = asyncio.run(scenario())
    assert answer == {"type": "published", "topic": "chat.pe-typing", "id": "t1", "offset": None}
    for first, second in heard:
        assert first["ephemeral"] is True and "offset" not in first and first["id"] == "t1"
        assert first["event"] == "typing" and first["from"]["username"] == "alice"
        assert second["ephemeral"] is True and "id" not in second
    assert [m["data"] for m in from_server] == [{"text": "server"}] * len(from_server)
    assert all(m.get("from", "absent") == "absent" for m in from_server)
    typer_got = [m for m in echo if m["type"] == "message" and m.get("ephemeral") and "from" in m]
    assert typer_got == []  # its own typing does not come back to it
    assert [m for m in replayed if m["type"] == "message"] == []
    assert stored(server_env, "chat.pe-typing") == []


def test_a_client_id_is_remembered_for_its_ttl_only(served, client_tls, users, server_env):
    alice = cookie(served, client_tls, users, "alice")
    publish = {"type": "publish", "topic": "chat.pe-ttl", "id": "same", "data": {"text": "a"}}

    async def scenario():
        async with connect(served, client_tls, alice) as socket_:
            await receive_json(socket_)
            await send(socket_, publish)
            first = await until(socket_, "published")
            await send(socket_, publish)
            within = await until(socket_, "published")
            await asyncio.sleep(ID_TTL + 0.5)  # past REALTIME_PUBLISH_ID_TTL
            await send(socket_, publish)
            after = await until(socket_, "published")
            return first, within, after

    first, within, after = asyncio.run(scenario())
    assert first["offset"] == within["offset"] == 1
    assert after["offset"] == 2  # remembered no longer: a new message
    assert len(stored(server_env, "chat.pe-ttl")) == 2
