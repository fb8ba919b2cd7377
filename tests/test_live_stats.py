"""The admin's live view without a browser (realtime/ops/live_stats.py): what workers
report to a real (private) Redis, how the picture sums them, the windows run past, and who may
see it. tests/test_admin_live.py watches it update in Chromium."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
import redis.asyncio
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client

from realtime import broadcast, topics
from realtime.messaging import streams
from realtime.messaging import topic_rules as registry
from realtime.ops import live_stats
from realtime.server import prometheus
from tests.helpers import wait_until
from tests.test_authorization import opened, signed_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def live_redis(redis_server, monkeypatch):
    """live_stats on the module's private Redis, emptied for each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    monkeypatch.setattr(live_stats, "sync_client", lambda: client)
    monkeypatch.setattr(live_stats.recorder, "enabled", True)
    monkeypatch.setattr(live_stats.recorder, "reached", {})
    prometheus.take_refused()
    yield redis_server
    client.close()


@pytest.fixture(autouse=True)
def _registry():
    saved = dict(registry.registrations)
    yield
    registry.registrations.clear()
    registry.registrations.update(saved)


def report_as(worker: str, sockets: int, redis_url: str, monkeypatch) -> None:
    monkeypatch.setenv("REALTIME_WORKER_ID", worker)

    async def write():
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await live_stats.write_report(client, sockets)
        finally:
            await client.aclose()

    asyncio.run(write())


def test_a_workers_entry_goes_three_intervals_after_its_last_report(
    live_redis, settings, monkeypatch
):
    settings.REALTIME_LIVE_STATS_INTERVAL = 1
    report_as("hostA-w1", 5, live_redis.url, monkeypatch)
    report_as("hostA-w2", 2, live_redis.url, monkeypatch)
    picture = live_stats.snapshot()
    assert [(w["worker"], w["sockets"]) for w in picture["workers"]] == [
        ("hostA-w1", 5),
        ("hostA-w2", 2),
    ]
    assert [h["sockets"] for h in picture["hosts"]] == [7]
    reported = time.monotonic()

    def only_w2_is_left() -> bool:
        report_as("hostA-w2", 3, live_redis.url, monkeypatch)  # w1 was killed: it stops reporting
        return [(w["worker"], w["sockets"]) for w in live_stats.snapshot()["workers"]] == [
            ("hostA-w2", 3)
        ]

    wait_until(only_w2_is_left, "w1's entry to go", timeout=3 + 1.5, every=0.1)
    assert time.monotonic() - reported > 3 - 0.2  # not before its 3 intervals


def test_a_messages_reach_sums_the_workers_and_its_latency_is_the_slowest(live_redis, monkeypatch):
    sent = broadcast.send("Reached twice")
    offset = streams.position(streams.BROADCASTS)[1]
    live_stats.recorder.delivered(streams.BROADCASTS, offset, 3, 0.010)
    report_as("hostA-w1", 3, live_redis.url, monkeypatch)
    live_stats.recorder.delivered(streams.BROADCASTS, offset, 4, 0.025)
    report_as("hostB-w1", 4, live_redis.url, monkeypatch)
    [message] = live_stats.snapshot()["messages"]
    assert message["kind"] == "broadcast" and message["what"] == sent.message
    assert (message["sockets"], message["latency_ms"], message["to"]) == (7, 25.0, "Everyone")


def test_the_stats_frame_a_watching_socket_gets_carries_the_picture(live_redis, monkeypatch):
    broadcast.send("Seen from a worker")
    report_as("hostA-w1", 2, live_redis.url, monkeypatch)
    frame = json.loads(asyncio.run(live_stats.stats_frame()))  # as the worker's loop builds it
    assert (frame["type"], frame["topic"]) == ("stats", live_stats.TOPIC)
    assert [m["what"] for m in frame["data"]["messages"]] == ["Seen from a worker"]
    assert [w["sockets"] for w in frame["data"]["workers"]] == [2]


def test_a_users_message_shows_to_whom_and_a_topics_not_its_data(live_redis):
    user = get_user_model().objects.create_user("ida", password="pw-ida")
    topics.send_to_user(user, {"secret": "for ida only"})
    topics.register("ledger.<int:n>", authorize=lambda u, n: False)  # removed by _registry
    topics.send("ledger.7", {"amount": 1000}, event="entry")
    to_topic, to_user = live_stats.snapshot()["messages"]
    assert (to_user["kind"], to_user["to"]) == ("user", f"user #{user.pk}")
    assert (to_topic["kind"], to_topic["to"], to_topic["what"]) == (
        "topic",
        "ledger.<int:n>",  # its pattern: a name may carry an identifier
        "event entry",
    )
    assert "secret" not in str(to_user) and "1000" not in str(to_topic)
    assert "ledger.7" not in str(to_topic)
    assert to_user["latency_ms"] is None and to_user["sockets"] == 0  # nobody had it yet


def test_refusals_count_over_the_window_only(live_redis, monkeypatch):
    monkeypatch.setattr(live_stats, "HOUR", 2)
    monkeypatch.setattr(live_stats, "BUCKET", 1)
    counted_at = time.monotonic()
    for reason in ("origin", "origin", "size"):
        prometheus.refuse(reason)
    report_as("hostA-w1", 0, live_redis.url, monkeypatch)
    assert live_stats.snapshot()["refused"] == [
        {"reason": "origin", "count": 2},
        {"reason": "size", "count": 1},
    ]
    wait_until(lambda: live_stats.snapshot()["refused"] == [], "the refusals to leave", 2 + 1.5)
    assert time.monotonic() - counted_at > 2 - 1 - 0.2  # kept the window, less one bucket


def test_refusals_a_report_could_not_write_are_written_by_the_next(live_redis, monkeypatch):
    prometheus.refuse("deadline")
    live_redis.stop()
    with pytest.raises((redis.RedisError, OSError)):
        report_as("hostA-w1", 0, live_redis.url, monkeypatch)
    live_redis.start()
    report_as("hostA-w1", 0, live_redis.url, monkeypatch)
    assert live_stats.snapshot()["refused"] == [{"reason": "deadline", "count": 1}]


def staff_who_may_view_broadcasts(name: str) -> Client:
    client = signed_in(name, staff=True)
    user = get_user_model().objects.get(username=name)
    user.user_permissions.add(Permission.objects.get(codename="view_broadcast"))
    return client


def test_only_active_staff_may_watch_the_live_topic_and_open_the_view(live_redis):
    other_staff = signed_in("stan", staff=True)  # without the permission to see broadcasts
    assert other_staff.get("/admin/realtime/broadcast/live/", secure=True).status_code == 403
    staff, member = staff_who_may_view_broadcasts("sam"), signed_in("mia")
    assert staff.get("/admin/realtime/broadcast/live/", secure=True).status_code == 200
    refused = member.get("/admin/realtime/broadcast/live/", secure=True)
    assert refused.status_code == 302 and "/admin/login/" in refused["Location"]
    assert Client().get("/admin/realtime/broadcast/live/", secure=True).status_code == 302

    async def subscribe(client):
        socket_ = await opened(client)
        await socket_.send_json_to({"type": "subscribe", "topic": live_stats.TOPIC})
        answer = await socket_.receive_json_from()
        await socket_.disconnect()
        return answer

    assert asyncio.run(subscribe(staff))["type"] == "subscribed"
    for refused_client in (member, other_staff, None):
        forbidden = asyncio.run(subscribe(refused_client))
        assert (forbidden["type"], forbidden["code"]) == ("error", "forbidden")


def test_the_view_says_so_when_redis_is_missing(live_redis, monkeypatch):
    monkeypatch.setattr(live_stats, "sync_client", lambda: None)
    page = staff_who_may_view_broadcasts("sam").get("/admin/realtime/broadcast/live/", secure=True)
    assert b"Live statistics need Redis" in page.content


def test_messages_show_for_the_window_only(live_redis, monkeypatch):
    monkeypatch.setattr(live_stats, "HOUR", 2)
    sent_at = time.monotonic()
    broadcast.send("Soon gone")
    assert [m["what"] for m in live_stats.snapshot()["messages"]] == ["Soon gone"]
    wait_until(lambda: live_stats.snapshot()["messages"] == [], "the message to leave", 2 + 1.5)
    assert time.monotonic() - sent_at > 2 - 1 - 0.2  # kept the window, less one bucket


@pytest.mark.parametrize("how", ["own permission", "group", "group's permission"])
def test_losing_the_permission_ends_the_live_topic_on_the_open_socket(live_redis, how):
    permission = Permission.objects.get(codename="view_broadcast")
    client = signed_in("gus", staff=True)
    user = get_user_model().objects.get(username="gus")
    group = Group.objects.create(name="watchers")
    if how == "own permission":
        user.user_permissions.add(permission)
    else:
        group.permissions.add(permission)
        user.groups.add(group)

    def take_it_away():
        if how == "own permission":
            user.user_permissions.remove(permission)
        elif how == "group":
            group.user_set.remove(user)  # from the group's side: the reverse relation
        else:
            permission.group_set.clear()  # from the permission's side, every group at once

    async def scenario():
        socket_ = await opened(client)
        await socket_.send_json_to({"type": "subscribe", "topic": live_stats.TOPIC})
        subscribed = await socket_.receive_json_from()
        await sync_to_async(take_it_away)()
        ended = await socket_.receive_json_from(timeout=5)
        await socket_.disconnect()
        return subscribed, ended

    subscribed, ended = asyncio.run(scenario())
    assert subscribed["type"] == "subscribed"
    assert ended == {"type": "unsubscribed", "topic": live_stats.TOPIC, "reason": "forbidden"}


def test_a_flood_of_messages_keeps_at_most_the_newest_the_view_shows():
    recorder = live_stats.Recorder()
    recorder.enabled = True
    for offset in range(1, 1001):
        recorder.delivered("$broadcasts", offset, 3, 0.01)
    recorder.delivered("$broadcasts", 1000, 2, 0.02)  # another write of one it has
    kept = recorder.take()
    assert len(kept) == live_stats.MESSAGES_SHOWN
    assert min(offset for _, offset in kept) == 1001 - live_stats.MESSAGES_SHOWN
    assert kept[("$broadcasts", 1000)] == [5, 0.02]
    assert recorder.take() == {}


def test_every_key_of_the_live_view_expires_past_its_window(live_redis, settings, monkeypatch):
    settings.REALTIME_LIVE_STATS_INTERVAL = 1
    monkeypatch.setattr(live_stats, "HOUR", 2)
    monkeypatch.setattr(live_stats, "BUCKET", 1)
    broadcast.send("Counted")
    offset = streams.position(streams.BROADCASTS)[1]
    live_stats.recorder.delivered(streams.BROADCASTS, offset, 3, 0.01)
    prometheus.refuse("origin")
    report_as("hostA-w1", 3, live_redis.url, monkeypatch)
    client = redis.Redis.from_url(live_redis.url)
    assert len(client.keys("realtime:live:*")) == 3  # workers, reach, refused
    # the workers' 3 intervals (+1 s), the window and its bucket: 4 s at most
    wait_until(lambda: client.keys("realtime:live:*") == [], "every key to expire", 4 + 1.5)
    client.close()
