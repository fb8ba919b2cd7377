"""Resume: a reconnecting client gives the broadcast stream's position (epoch, offset) and gets
what it missed, each broadcast once, in offset order, within a window; or resume_failed."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from realtime import broadcast
from realtime.messaging import streams
from realtime.models import Broadcast, TopicMessage
from tests.test_broadcast import socket_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _empty_channel_layer():
    yield
    async_to_sync(get_channel_layer().flush)()


def offset_of(sent: Broadcast) -> int:
    return TopicMessage.objects.get(broadcast=sent).offset


def epoch() -> str:
    return streams.position(streams.BROADCASTS)[0]


def resume(since, client=None) -> list[dict]:
    """Open a socket, send resume, return every message up to resumed/resume_failed/error."""

    async def scenario():
        communicator = socket_for(client)
        assert (await communicator.connect())[0]
        await communicator.receive_json_from()  # welcome
        await communicator.send_json_to({"type": "resume", "since": since})
        messages = []
        while not messages or messages[-1]["type"] == "broadcast":
            messages.append(await communicator.receive_json_from())
        await communicator.disconnect()
        return messages

    return asyncio.run(scenario())


def since(offset: int) -> dict:
    return {"epoch": epoch(), "offset": offset}


def test_it_replays_what_was_missed_in_order_then_says_resumed():
    first, second, third = (broadcast.send(f"b{n}") for n in range(3))
    messages = resume(since(offset_of(first)))
    assert [m["type"] for m in messages] == ["broadcast", "broadcast", "resumed"]
    assert [m["id"] for m in messages[:2]] == [second.pk, third.pk]
    assert [m["offset"] for m in messages[:2]] == [offset_of(second), offset_of(third)]
    assert messages[-1] == {
        "type": "resumed",
        "epoch": epoch(),
        "offset": offset_of(third),
        "replayed": 2,
    }


def test_nothing_missed_is_an_empty_replay():
    latest = broadcast.send("only")
    assert resume(since(offset_of(latest))) == [
        {"type": "resumed", "epoch": epoch(), "offset": offset_of(latest), "replayed": 0}
    ]


def test_a_fresh_database_resumes_from_zero():
    assert resume(since(0)) == [{"type": "resumed", "epoch": epoch(), "offset": 0, "replayed": 0}]


def test_the_replay_keeps_to_the_clients_audience():
    start = broadcast.send("before")
    broadcast.send("for staff", audience="staff")
    public = broadcast.send("for all")
    messages = resume(since(offset_of(start)))
    assert [m.get("id") for m in messages] == [public.pk, None]
    assert messages[-1]["offset"] == offset_of(public)


def test_a_broadcast_stored_but_not_published_goes_out_when_the_republisher_runs(monkeypatch):
    """Store first, publish after: a broadcast whose publish never ran is not lost."""
    monkeypatch.setattr(streams, "publish", lambda pk: streams.TAKEN)
    stored = broadcast.send("stored, its sender died before publishing")
    monkeypatch.undo()
    assert TopicMessage.objects.get(broadcast=stored).offset is None
    assert streams.republish_pending(grace=0) == 1
    assert Broadcast.objects.get(pk=stored.pk).published_at is not None
    assert resume(since(0))[0]["id"] == stored.pk


def test_a_gap_larger_than_the_count_window_fails(settings):
    settings.REALTIME_RESUME_MAX_COUNT = 2
    start = offset_of(broadcast.send("start"))
    for n in range(3):
        broadcast.send(f"missed {n}")
    [failed] = resume(since(start))
    assert failed == {
        "type": "resume_failed",
        "reason": "too_many",
        "epoch": epoch(),
        "offset": start + 3,
        "detail": failed["detail"],
    }
    assert failed["detail"]


def test_a_gap_older_than_the_age_window_fails(settings):
    settings.REALTIME_RESUME_MAX_AGE = 60
    start = broadcast.send("start")
    old = broadcast.send("old")
    TopicMessage.objects.filter(broadcast=old).update(
        published_at=timezone.now() - timedelta(minutes=5)
    )
    [failed] = resume(since(offset_of(start)))
    assert failed["reason"] == "too_old"


def test_an_offset_from_the_future_or_another_epoch_fails():
    latest = broadcast.send("latest")
    for position in (since(offset_of(latest) + 100), {"epoch": "another", "offset": 0}):
        [failed] = resume(position)
        assert (failed["type"], failed["reason"]) == ("resume_failed", "epoch_changed")
        assert (failed["epoch"], failed["offset"]) == (epoch(), offset_of(latest))


@pytest.mark.parametrize(
    "position",
    [None, 3, {"offset": 1}, {"epoch": "e", "offset": -1}, {"epoch": "e", "offset": True},
     {"epoch": "e", "offset": 1.5}, {"epoch": 7, "offset": 1}, {"epoch": "e" * 65, "offset": 1}],
)  # fmt: skip
def test_a_bad_position_is_an_error(position):
    [error] = resume(position)
    assert error["type"] == "error"
    assert error["code"] == "invalid_resume"


def test_a_live_broadcast_before_the_resume_is_not_replayed_again():
    """The socket is on the stream from its welcome: what was published before comes from the
    replay, what after live; each arrives once (one that arrived live before the resume
    precedes the replay)."""
    position = since(offset_of(broadcast.send("start")))
    missed = broadcast.send("missed")

    async def scenario():
        communicator = socket_for()
        assert (await communicator.connect())[0]
        await communicator.receive_json_from()
        live = await sync_to_async(broadcast.send)("live")
        await communicator.send_json_to({"type": "resume", "since": position})
        messages = [await communicator.receive_json_from() for _ in range(3)]
        nothing_more = await communicator.receive_nothing()
        await communicator.disconnect()
        return live, messages, nothing_more

    live, messages, nothing_more = asyncio.run(scenario())
    assert [(m["type"], m.get("id")) for m in messages] == [
        ("broadcast", live.pk),
        ("broadcast", missed.pk),
        ("resumed", None),
    ]
    assert nothing_more


def test_offsets_follow_publishing_not_storing():
    """Stored first but published last (its sender's publish never ran): it gets the later
    offset, so a client that saw the newer one and resumes from it gets it."""
    real_publish = streams.publish
    streams.publish = lambda pk: streams.TAKEN
    try:
        late = broadcast.send("stored first, published last")
    finally:
        streams.publish = real_publish
    newer = broadcast.send("stored second, published first")
    assert streams.republish_pending(grace=0) == 1
    assert offset_of(late) == offset_of(newer) + 1
    messages = resume(since(offset_of(newer)))
    assert [m.get("id") for m in messages] == [late.pk, None]


def test_a_second_resume_replays_nothing_twice():
    position = since(offset_of(broadcast.send("start")))
    broadcast.send("missed")

    async def scenario():
        communicator = socket_for()
        assert (await communicator.connect())[0]
        await communicator.receive_json_from()
        replies = []
        for _ in range(2):
            await communicator.send_json_to({"type": "resume", "since": position})
            replies.append(await communicator.receive_json_from())
            if replies[-1]["type"] == "broadcast":
                replies.append(await communicator.receive_json_from())
        await communicator.disconnect()
        return replies

    types = [m["type"] for m in asyncio.run(scenario())]
    assert types == ["broadcast", "resumed", "resumed"]


def test_a_position_in_the_url_is_replayed_before_any_live_broadcast():
    """A client that resumes in its URL never sees a later broadcast before an earlier one,
    so a drop in the middle cannot leave it holding a position past what it missed."""
    position = since(offset_of(broadcast.send("start")))
    missed = broadcast.send("missed")

    async def scenario():
        communicator = socket_for(query=f"broadcasts={position['epoch']}:{position['offset']}")
        assert (await communicator.connect())[0]
        welcome = await communicator.receive_json_from()
        live = await sync_to_async(broadcast.send)("live")
        messages = [await communicator.receive_json_from() for _ in range(3)]
        nothing_more = await communicator.receive_nothing()
        await communicator.disconnect()
        return welcome, live, messages, nothing_more

    welcome, live, messages, nothing_more = asyncio.run(scenario())
    assert welcome["type"] == "welcome"
    assert [(m["type"], m.get("id")) for m in messages] == [
        ("broadcast", missed.pk),
        ("resumed", None),
        ("broadcast", live.pk),
    ]
    assert nothing_more


@pytest.mark.parametrize("value", ["nope", "e:", "e:-1", ":3", "e:1.5"])
def test_a_position_in_the_url_spelt_wrong_is_an_error_and_the_socket_goes_live(value):
    async def scenario():
        communicator = socket_for(query=f"broadcasts={value}")
        assert (await communicator.connect())[0]
        await communicator.receive_json_from()
        error = await communicator.receive_json_from()
        await communicator.disconnect()
        return error

    error = asyncio.run(scenario())
    assert (error["type"], error["code"]) == ("error", "invalid_resume")
