"""A worker's delivery of streams (realtime.messaging.delivery), without a database or a
server: each message once per socket, in offset order, through copies, gaps, a history that
lost some, held subscriptions and the catch-up."""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async

from realtime.messaging.delivery import Streams
from realtime.messaging.streams import Entry, Replay
from tests.helpers import CAUGHT_UP


class Socket:
    """A recipient that records the texts written to it."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def push(self, frame) -> None:
        self.texts.append(frame.text)


def history_of(count: int) -> dict[int, Entry]:
    return {n: Entry(n, f"m{n}") for n in range(1, count + 1)}


def streams_over(history: dict[int, Entry], last: int = 0) -> tuple[Streams, list]:
    """Streams reading positions and entries from `history` (standing for the database)."""
    streams = Streams()
    streams.in_thread = sync_to_async  # no database: nothing to check around the reads
    reads: list[tuple[int, int]] = []
    streams.read_position = lambda name: ("e1", last)

    def read_entries(name, after, upto):
        reads.append((after, upto))
        return [history[n] for n in range(after + 1, upto + 1) if n in history]

    streams.read_entries = read_entries
    streams.read_replay = lambda name, epoch, after, upto: Replay(
        "e1", [history[n] for n in range(after + 1, upto + 1)]
    )
    return streams, reads


def live(offset: int, topic: str = "t") -> dict:
    return {"type": "realtime.topic", "topic": topic, "offset": offset, "text": f"m{offset}"}


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def subscribed(streams: Streams, *sockets: Socket, name: str = "t"):
    stream = await streams.open(name)
    return [streams.attach(stream, s, s, name) for s in sockets]


def test_live_messages_reach_every_subscriber_once_in_order_and_copies_are_dropped():
    async def scenario():
        streams, reads = streams_over(history_of(3))
        a, b = Socket(), Socket()
        await subscribed(streams, a, b)
        for offset in (1, 2, 2, 1, 3):
            streams.receive(live(offset))
        await settle()
        return a.texts, b.texts, reads

    a, b, reads = asyncio.run(scenario())
    assert a == b == ["m1", "m2", "m3"]
    assert reads == []  # nothing was missing: no database read


def test_a_gap_is_filled_from_the_history_before_what_came_after_it():
    async def scenario():
        streams, reads = streams_over(history_of(5))
        a = Socket()
        await subscribed(streams, a)
        for offset in (1, 4, 5, 2):  # 2 and 3 lost by Redis; 2 arrives late
            streams.receive(live(offset))
        await settle()
        return a.texts, reads, streams.filled

    texts, reads, filled = asyncio.run(scenario())
    assert texts == ["m1", "m2", "m3", "m4", "m5"]
    assert reads == [(1, 4)]  # one read, from what was delivered up to what arrived
    assert filled == 3


def test_messages_that_arrive_while_the_position_is_read_are_not_lost_or_doubled():
    async def scenario():
        streams, reads = streams_over(history_of(5), last=2)
        gate = asyncio.Event()
        real = streams.read_position

        def slow_position(name):
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
            return real(name)

        loop = asyncio.get_running_loop()
        streams.read_position = slow_position
        watcher = Socket()
        opening = asyncio.ensure_future(streams.open("t"))
        await asyncio.sleep(0.05)
        for offset in (2, 3, 4):  # 2 is at the position read: already counted
            streams.receive(live(offset))
        gate.set()
        stream = await opening
        subscription = streams.attach(stream, watcher, watcher, "t")
        streams.receive(live(5))
        await settle()
        return watcher.texts, subscription.covered_from, reads

    # 3 and 4 came before this subscriber: its position says so (a resume would replay them).
    assert asyncio.run(scenario()) == (["m5"], 4, [])


def test_a_later_subscriber_starts_at_the_delivered_offset():
    async def scenario():
        streams, _ = streams_over(history_of(3))
        early, late = Socket(), Socket()
        await subscribed(streams, early)
        streams.receive(live(1))
        [subscription] = await subscribed(streams, late)
        streams.receive(live(2))
        return early.texts, late.texts, subscription.covered_from

    early, late, covered_from = asyncio.run(scenario())
    assert (early, late, covered_from) == (["m1", "m2"], ["m2"], 1)


def test_a_held_subscription_writes_its_live_messages_after_what_it_is_sent_meanwhile():
    async def scenario():
        streams, _ = streams_over(history_of(3))
        a = Socket()
        [subscription] = await subscribed(streams, a)
        subscription.hold()
        streams.receive(live(1))
        a.texts.append("replayed earlier")  # what the consumer sends while held
        streams.receive(live(2))
        subscription.release()
        streams.receive(live(3))
        return a.texts

    assert asyncio.run(scenario()) == ["replayed earlier", "m1", "m2", "m3"]


def test_a_resume_from_past_what_this_worker_delivered_is_not_sent_those_again():
    """The client had 2 to 4 from another worker, which heard them first: here 2 arrives
    while its resume is read (held), 3 and 4 after it; only 5 is new to it."""

    async def scenario():
        streams, _ = streams_over(history_of(5))
        watcher, resumer = Socket(), Socket()
        await subscribed(streams, watcher)
        streams.receive(live(1))
        [subscription] = await subscribed(streams, resumer)
        subscription.hold()
        real = streams.read_replay

        def replay_while_2_arrives(*args):
            asyncio.run_coroutine_threadsafe(arrive(2), loop).result()
            return real(*args)

        async def arrive(offset):
            streams.receive(live(offset))

        loop = asyncio.get_running_loop()
        streams.read_replay = replay_while_2_arrives
        replay = await streams.history(subscription, "e1", 4)
        subscription.release()
        for offset in (3, 4, 5):
            streams.receive(live(offset))
        return watcher.texts, resumer.texts, replay.entries, subscription.position

    watcher, resumer, replayed, position = asyncio.run(scenario())
    assert watcher == ["m1", "m2", "m3", "m4", "m5"]
    assert (resumer, replayed, position) == (["m5"], [], 5)


def test_what_the_history_no_longer_has_is_skipped_not_waited_for(caplog):
    async def scenario():
        history = history_of(6)
        del history[2], history[3]  # gone past the history's window
        streams, _ = streams_over(history)
        a = Socket()
        await subscribed(streams, a)
        for offset in (1, 4, 5):
            streams.receive(live(offset))
        await settle()
        streams.receive(live(6))
        return a.texts

    assert asyncio.run(scenario()) == ["m1", "m4", "m5", "m6"]
    assert "Messages 2 to 3 of t are no longer in the history" in caplog.text


def test_the_catch_up_fills_a_stream_whose_last_message_never_arrived(caplog):
    async def scenario():
        streams, reads = streams_over(history_of(2))
        a = Socket()
        await subscribed(streams, a)
        streams.receive(live(1))  # 2 was lost, and nothing came after it
        started = streams.behind({"t": 2, "not here": 9})
        await settle()
        again = streams.behind({"t": 2})
        return a.texts, started, again, reads

    texts, started, again, reads = asyncio.run(scenario())
    assert CAUGHT_UP.search(caplog.text)  # what tests/test_soak.py looks for
    assert texts == ["m1", "m2"]
    assert (started, again) == (1, 0)
    assert reads == [(1, 2)]


def test_a_failed_fill_is_tried_again_by_the_next_message(caplog):
    async def scenario():
        streams, _ = streams_over(history_of(4))
        working = streams.read_entries
        streams.read_entries = lambda *args: (_ for _ in ()).throw(OSError("database away"))
        a = Socket()
        await subscribed(streams, a)
        streams.receive(live(2))
        await settle()
        streams.read_entries = working
        streams.receive(live(4))
        await settle()
        return a.texts

    assert asyncio.run(scenario()) == ["m1", "m2", "m3", "m4"]
    assert "database away" in caplog.text


def test_audiences_filter_the_broadcast_stream_but_positions_advance():
    async def scenario():
        streams, _ = streams_over({})
        staff, anonymous = Socket(), Socket()
        stream = await streams.open("$broadcasts")
        streams.attach(stream, staff, staff, "", frozenset({"everyone", "staff"}))
        plain = streams.attach(stream, anonymous, anonymous, "", frozenset({"everyone"}))
        for offset, audience in [(1, "everyone"), (2, "staff"), (3, "everyone")]:
            event = {**live(offset, "$broadcasts"), "audience": audience}
            streams.receive(event)
        return staff.texts, anonymous.texts, plain.position

    staff, anonymous, position = asyncio.run(scenario())
    assert staff == ["m1", "m2", "m3"]
    assert anonymous == ["m1", "m3"]
    assert position == 3


def test_a_stream_is_forgotten_when_its_last_subscriber_leaves():
    async def scenario():
        streams, _ = streams_over({})
        a, b = Socket(), Socket()
        await subscribed(streams, a, b)
        streams.detach(a, "t")
        kept = "t" in streams.streams
        streams.detach_all(b)
        return kept, "t" in streams.streams, streams.of

    assert asyncio.run(scenario()) == (True, False, {})
