"""Resume: a reconnecting client asks for what it missed and gets it in order, within a window."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from realtime import broadcast
from realtime.broadcasting import sending
from realtime.models import Broadcast
from tests.test_broadcast import socket_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _empty_channel_layer():
    yield
    async_to_sync(get_channel_layer().flush)()


def resume(after, client=None) -> list[dict]:
    """Open a socket, send resume, return every message up to resumed/resume_failed/error."""

    async def scenario():
        communicator = socket_for(client)
        assert (await communicator.connect())[0]
        await communicator.receive_json_from()  # welcome
        await communicator.send_json_to({"type": "resume", "after": after})
        messages = []
        while not messages or messages[-1]["type"] == "broadcast":
            messages.append(await communicator.receive_json_from())
        await communicator.disconnect()
        return messages

    return asyncio.run(scenario())


def test_it_replays_what_was_missed_in_order_then_says_resumed():
    first, second, third = (broadcast.send(f"b{n}") for n in range(3))
    messages = resume(first.pk)
    assert [m["type"] for m in messages] == ["broadcast", "broadcast", "resumed"]
    assert [m["id"] for m in messages[:2]] == [second.pk, third.pk]
    assert messages[-1] == {"type": "resumed", "after": first.pk, "replayed": 2, "latest": third.pk}


def test_nothing_missed_is_an_empty_replay():
    latest = broadcast.send("only")
    assert resume(latest.pk) == [
        {"type": "resumed", "after": latest.pk, "replayed": 0, "latest": latest.pk}
    ]


def test_a_fresh_database_resumes_from_zero():
    assert resume(0) == [{"type": "resumed", "after": 0, "replayed": 0, "latest": 0}]


def test_the_replay_keeps_to_the_clients_audience():
    start = broadcast.send("before")
    broadcast.send("for staff", audience="staff")
    public = broadcast.send("for all")
    messages = resume(start.pk)
    assert [m.get("id") for m in messages] == [public.pk, None]


def test_unpublished_broadcasts_are_replayed_too(monkeypatch):
    """Store first, publish after: a broadcast stored while Redis was down is not lost."""
    start = broadcast.send("before")
    monkeypatch.setattr(sending, "publish", lambda b: False)
    stored = broadcast.send("stored during an outage")
    assert Broadcast.objects.get(pk=stored.pk).published_at is None
    assert resume(start.pk)[0]["id"] == stored.pk


def test_a_gap_larger_than_the_count_window_fails(settings):
    settings.REALTIME_RESUME_MAX_COUNT = 2
    start = broadcast.send("start")
    for n in range(3):
        broadcast.send(f"missed {n}")
    [failed] = resume(start.pk)
    assert failed["type"] == "resume_failed"
    assert failed["reason"] == "too_many"
    assert failed["detail"]


def test_a_gap_older_than_the_age_window_fails(settings):
    settings.REALTIME_RESUME_MAX_AGE = 60
    start = broadcast.send("start")
    old = broadcast.send("old")
    Broadcast.objects.filter(pk=old.pk).update(sent_at=timezone.now() - timedelta(minutes=5))
    [failed] = resume(start.pk)
    assert failed["reason"] == "too_old"


def test_an_id_from_the_future_fails():
    latest = broadcast.send("latest")
    [failed] = resume(latest.pk + 100)
    assert failed == {
        "type": "resume_failed",
        "after": latest.pk + 100,
        "reason": "unknown_id",
        "latest": latest.pk,
        "detail": failed["detail"],
    }


@pytest.mark.parametrize("after", [None, -1, "3", True, 1.5])
def test_a_bad_after_is_an_error(after):
    [error] = resume(after)
    assert error["type"] == "error"
    assert error["code"] == "invalid_resume"


def test_a_live_broadcast_during_the_replay_is_not_lost():
    """Sockets join their groups before the client can resume: live and replayed may both
    arrive (the client de-duplicates by id), but nothing falls between them."""
    start = broadcast.send("start")
    missed = broadcast.send("missed")

    async def scenario():
        communicator = socket_for()
        assert (await communicator.connect())[0]
        await communicator.receive_json_from()
        live = await sync_to_async(broadcast.send)("live")
        await communicator.send_json_to({"type": "resume", "after": start.pk})
        messages = [await communicator.receive_json_from() for _ in range(4)]
        await communicator.disconnect()
        return live, messages

    live, messages = asyncio.run(scenario())
    ids = [m.get("id") for m in messages if m["type"] == "broadcast"]
    assert set(ids) == {missed.pk, live.pk}


def test_a_broadcast_published_after_a_newer_one_is_replayed(monkeypatch):
    """Republished after an outage, broadcast n reaches clients after n + 1: a client that
    saw n + 1 and resumes from it must still get n."""
    real_publish = sending.publish
    monkeypatch.setattr(sending, "publish", lambda b: False)
    late = broadcast.send("stored while Redis was down")
    monkeypatch.setattr(sending, "publish", real_publish)
    newer = broadcast.send("sent after Redis came back")
    assert sending.publish(Broadcast.objects.get(pk=late.pk))  # the republisher's turn
    messages = resume(newer.pk)
    assert [m.get("id") for m in messages] == [late.pk, None]


def test_old_broadcasts_published_long_ago_are_not_replayed_again():
    old = broadcast.send("old")
    Broadcast.objects.filter(pk=old.pk).update(published_at=timezone.now() - timedelta(minutes=10))
    seen = broadcast.send("seen")
    assert resume(seen.pk)[0]["type"] == "resumed"
