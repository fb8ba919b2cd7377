"""Replays have a budget of their own, per socket and per client address (issue 25, item 6;
realtime/websocket/replay_budget.py): the buckets with a clock we move, the consumer in process
(resume, subscribe with since, positions in the URL), and a flood against `serve --workers 2`
from one address while /healthz answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import tracemalloc

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer

from project.asgi import application
from realtime import broadcast, topics
from realtime.messaging import streams
from realtime.messaging import topic_rules as registry
from realtime.websocket import replay_budget
from realtime.websocket.replay_budget import AddressBuckets, ReplayBudget
from tests.helpers import (
    PYTHON,
    Communicator,
    free_port,
    healthz,
    receive_json,
    send_broadcasts,
    wait_until,
    ws_connect,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(replay_budget, "addresses", AddressBuckets(clock=clock))
    return clock


@pytest.fixture
def small_budget(settings, monkeypatch):
    """3 replays at once per socket and 4 per address, then one a second each."""
    settings.REALTIME_REPLAY_RATE, settings.REALTIME_REPLAY_BURST = 1, 3
    settings.REALTIME_REPLAY_ADDRESS_RATE, settings.REALTIME_REPLAY_ADDRESS_BURST = 1, 4
    monkeypatch.setattr(replay_budget, "addresses", AddressBuckets())


def budget(clock, address: str | None = "198.51.100.7") -> ReplayBudget:
    scope = {"client": (address, 40000)} if address else {}
    return ReplayBudget(scope, clock=clock)


# --- The buckets, with a clock the test moves ------------------------------------------------


def test_a_socket_gets_its_burst_then_one_a_second(small_budget, clock):
    mine = budget(clock, address=None)
    assert [mine.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert mine.take() == pytest.approx(1.0)  # refused: the seconds until the next one
    clock.now += 0.5
    assert mine.take() == pytest.approx(0.5)
    clock.now += 0.5  # past the period
    assert mine.take() == 0.0
    assert mine.take() > 0


def test_what_a_replay_read_is_charged_after_it_and_paid_back_over_time(small_budget, clock):
    """An empty replay costs its one token; 500 rows ten more, down into debt, so the next
    replay waits until the debt is paid back at the rate (past that period it is allowed)."""
    mine, neighbour = budget(clock), budget(clock)
    assert mine.take() == 0.0
    mine.charge(0)  # up to date: nothing more
    assert mine.take() == 0.0
    mine.charge(500)  # an old position: 10 tokens more, from the socket's and the address's
    # Both buckets are at their floor (a burst of debt: -3 and -4) and need 1: the address's
    # is the longer wait, for this socket and for every other socket of the address.
    wait = mine.take()
    assert wait == pytest.approx(4 + 1)
    assert neighbour.take() == pytest.approx(4 + 1)
    clock.now += wait
    assert mine.take() == 0.0


def test_the_sockets_of_one_address_share_its_bucket_and_others_do_not(small_budget, clock):
    first, second = budget(clock), budget(clock)
    elsewhere = budget(clock, "203.0.113.9")
    assert [first.take() for _ in range(3)] == [0.0] * 3
    assert second.take() == 0.0
    assert second.take() == pytest.approx(1.0)  # its own bucket has 2 left: the address's is out
    assert elsewhere.take() == 0.0
    clock.now += 1.0
    assert second.take() == 0.0


def test_a_refusal_by_one_bucket_spends_nothing_from_the_other(small_budget, clock):
    first, second = budget(clock), budget(clock)
    for _ in range(3):
        first.take()
    second.take()
    for _ in range(10):
        assert second.take() > 0  # the address's is out; the socket's must keep its two
    clock.now += 2.0
    assert [second.take() for _ in range(2)] == [0.0, 0.0]  # two from the address, refilled


def test_ipv6_addresses_count_by_their_64(small_budget, clock):
    one, other = budget(clock, "2001:db8:1:2::10"), budget(clock, "2001:db8:1:2::99")
    assert [one.take() for _ in range(3)] + [other.take()] == [0.0] * 4
    assert other.take() > 0


def test_the_positions_of_one_url_are_taken_together_and_never_more_than_a_burst(
    small_budget, clock
):
    mine = budget(clock)
    assert mine.take(2) == 0.0
    assert mine.take(2) == pytest.approx(1.0)  # one left in the socket's bucket, two needed
    clock.now += 2.0  # both full again
    assert mine.take(50) == 0.0  # a burst at most: each bucket's whole content


def test_a_rate_of_zero_turns_a_bucket_off(settings, clock):
    settings.REALTIME_REPLAY_RATE = 0
    settings.REALTIME_REPLAY_ADDRESS_RATE = 0
    mine = budget(clock)
    assert all(mine.take() == 0.0 for _ in range(1000))
    assert replay_budget.addresses.buckets == {}


def test_an_idle_address_is_forgotten_once_its_bucket_is_full_again(small_budget, clock):
    budget(clock, "198.51.100.1").take()
    budget(clock, "198.51.100.2").take()
    assert list(replay_budget.addresses.buckets) == ["198.51.100.1", "198.51.100.2"]
    clock.now += 0.9  # not yet full (one a second)
    budget(clock, "198.51.100.3").take()
    assert len(replay_budget.addresses.buckets) == 3
    clock.now += 0.2  # past the period: the first two are as good as new
    budget(clock, "198.51.100.3").take()
    assert list(replay_budget.addresses.buckets) == ["198.51.100.3"]


def test_memory_is_bounded_whatever_the_number_of_addresses(small_budget, clock, monkeypatch):
    monkeypatch.setattr(replay_budget, "addresses", AddressBuckets(most=10_000, clock=clock))
    tracemalloc.start()
    try:
        for n in range(30_000):  # none idle: each spent one, and the clock stands still
            budget(clock, f"10.{n // 65536}.{n // 256 % 256}.{n % 256}").take()
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(replay_budget.addresses.buckets) == 10_000
    assert used < 5_000_000  # measured: about 2.8 MB for 10,000 addresses


# --- The consumer, in process ----------------------------------------------------------------


@pytest.fixture
def _topic():
    saved = dict(registry.registrations)
    topics.register("news", authorize=lambda user: True)
    yield
    registry.registrations.clear()
    registry.registrations.update(saved)
    async_to_sync(get_channel_layer().flush)()


def socket_from(address: str, query: str = "") -> Communicator:
    headers = [(b"origin", b"https://localhost"), (b"host", b"localhost")]

    async def over_tls(scope, receive, send):
        scope = {**scope, "scheme": "wss", "client": (address, 40000)}
        return await application(scope, receive, send)

    return Communicator(over_tls, f"/ws/?{query}" if query else "/ws/", headers=headers)


async def opened_from(address: str) -> tuple[Communicator, dict]:
    socket_ = socket_from(address)
    assert (await socket_.connect())[0]
    return socket_, await socket_.receive_json_from()


async def resume(socket_, position: dict) -> dict:
    """The answer to a resume: resumed, resume_failed or an error (after any broadcasts)."""
    await socket_.send_json_to({"type": "resume", "since": position})
    while True:
        answer = await socket_.receive_json_from()
        if answer["type"] != "broadcast":
            return answer


def kinds(answers: list[dict]) -> list[str]:
    return [a.get("code", a["type"]) for a in answers]


@pytest.mark.django_db(transaction=True)
def test_resumes_from_one_address_are_refused_past_the_budget_then_come_back(small_budget, clock):
    broadcast.send("One to replay")

    async def scenario():
        first, welcome = await opened_from("198.51.100.7")
        second, _ = await opened_from("198.51.100.7")
        other, _ = await opened_from("203.0.113.9")
        before = {**welcome["broadcasts"], "offset": welcome["broadcasts"]["offset"] - 1}
        firsts = [await resume(first, before) for _ in range(4)]
        seconds = [await resume(second, before) for _ in range(2)]
        elsewhere = await resume(other, before)
        clock.now += seconds[-1]["retry_after"]  # past the period
        again = await resume(second, before)
        for socket_ in (first, second, other):
            await socket_.disconnect()
        return firsts, seconds, elsewhere, again

    firsts, seconds, elsewhere, again = asyncio.run(scenario())
    assert kinds(firsts) == ["resumed"] * 3 + ["rate_limited"]
    assert kinds(seconds) == ["resumed", "rate_limited"]  # the address's fourth, then none
    refused = seconds[-1]
    assert refused == {
        "type": "error",
        "code": "rate_limited",
        "detail": "Too many replays: this resume was refused and nothing changed; send it "
        "again in 1 s.",
        "retry_after": 1,
    }
    assert elsewhere["type"] == "resumed"
    assert again["type"] == "resumed"  # (what this socket had replayed is not sent twice)


@pytest.mark.django_db(transaction=True)
def test_a_subscribe_with_since_over_the_budget_is_refused_whole(small_budget, clock, _topic):
    async def scenario():
        socket_, _ = await opened_from("198.51.100.7")
        await socket_.send_json_to({"type": "subscribe", "topic": "news"})
        position = await socket_.receive_json_from()  # no since: costs nothing
        await socket_.send_json_to({"type": "unsubscribe", "topic": "news"})
        await socket_.receive_json_from()
        since = {"epoch": position["epoch"], "offset": position["offset"]}
        for _ in range(3):  # the socket's three: a topic's position is no broadcasts' one
            await socket_.send_json_to({"type": "resume", "since": since})
            assert (await socket_.receive_json_from())["type"] == "resume_failed"
        await socket_.send_json_to({"type": "subscribe", "topic": "news", "since": since})
        refused = await socket_.receive_json_from()
        await sync_to_async(topics.send)("news", {"n": 1})
        nothing = await socket_.receive_nothing(0.5)  # not subscribed: nothing changed
        clock.now += refused["retry_after"]
        await socket_.send_json_to({"type": "subscribe", "topic": "news", "since": since})
        subscribed, replayed = await socket_.receive_json_from(), await socket_.receive_json_from()
        await socket_.disconnect()
        return refused, nothing, subscribed, replayed

    refused, nothing, subscribed, replayed = asyncio.run(scenario())
    assert (refused["type"], refused["code"], refused["topic"]) == ("error", "rate_limited", "news")
    assert "this subscribe was refused and nothing changed" in refused["detail"]
    assert nothing
    assert subscribed["type"] == "subscribed"
    assert (replayed["type"], replayed["data"]) == ("message", {"n": 1})  # nothing lost


@pytest.mark.django_db(transaction=True)
def test_positions_in_the_url_over_the_address_budget_close_before_the_welcome(small_budget, clock):
    position = streams.position(streams.BROADCASTS)
    query = f"broadcasts={position[0]}:{position[1]}"

    async def scenario():
        answers = []
        for _ in range(6):
            socket_ = socket_from("198.51.100.7", query)
            assert (await socket_.connect())[0]
            first = await socket_.receive_output()
            answers.append(first.get("code") or json.loads(first["text"])["type"])
            await socket_.disconnect()
        clock.now += 1.0  # past the period: one more
        socket_ = socket_from("198.51.100.7", query)
        assert (await socket_.connect())[0]
        later = await socket_.receive_json_from()
        await socket_.disconnect()
        return answers, later

    answers, later = asyncio.run(scenario())
    # Each new socket has a full bucket of its own; the address's four are shared.
    assert answers == ["welcome"] * 4 + [1013, 1013]
    assert later["type"] == "welcome"


# --- Against a real server -------------------------------------------------------------------

STARTED = " started (pid "


async def replays_until_refused(socket_, position: dict, most: int) -> tuple[int, dict | None]:
    """Send resumes until one is refused: how many were served, and the refusal."""
    for served in range(most):
        await socket_.send(json.dumps({"type": "resume", "since": position}))
        while (answer := await receive_json(socket_))["type"] == "broadcast":
            pass
        if answer["type"] != "resumed":
            return served, answer
    return most, None


async def socket_on(url: str, tls, worker: str, stack) -> tuple:
    for _ in range(40):
        socket_ = await stack.enter_async_context(ws_connect(url, tls))
        welcome = await receive_json(socket_)
        if welcome["worker"].endswith(worker):
            return socket_, welcome
        await socket_.close()
    raise AssertionError(f"no socket landed on {worker}")


@pytest.mark.e2e
def test_a_flood_of_resumes_from_one_address_is_refused_on_its_sockets_and_healthz_answers(
    start, redis_server, client_tls, server_env
):
    port = free_port()
    serve = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(
        serve,
        port,
        REDIS_URL=redis_server.url,
        REALTIME_REPLAY_RATE="1",
        REALTIME_REPLAY_BURST="5",
        REALTIME_REPLAY_ADDRESS_RATE="1",
        REALTIME_REPLAY_ADDRESS_BURST="8",
    )
    wait_until(lambda: server.log().count(STARTED) >= 2, "both workers started")
    send_broadcasts(server_env, redis_server.url, [f"Replayed {n}" for n in range(20)])
    url = f"wss://localhost:{port}/ws/"

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            flooder, welcome = await socket_on(url, client_tls, "w1", stack)
            neighbour, _ = await socket_on(url, client_tls, "w1", stack)
            position = {**welcome["broadcasts"], "offset": welcome["broadcasts"]["offset"] - 20}
            started = time.monotonic()
            flooded = await replays_until_refused(flooder, position, 50)
            limited_too = await replays_until_refused(neighbour, position, 50)
            elapsed = time.monotonic() - started
            health = await asyncio.to_thread(healthz, port, client_tls)
            await asyncio.sleep(limited_too[1]["retry_after"])  # past the period
            back = await replays_until_refused(neighbour, position, 1)
            return flooded, limited_too, elapsed, health, back

    flooded, limited_too, elapsed, health, back = asyncio.run(scenario())
    served, refusal = flooded
    assert served == 5 and refusal["code"] == "rate_limited"
    assert "resume was refused" in refusal["detail"]
    # Another socket of the same address, with its own five untouched, got what the address
    # had left (8 - 5, plus one a second meanwhile), not its own burst.
    assert limited_too[0] <= 3 + int(elapsed) + 1 and limited_too[0] < 5
    assert limited_too[1]["code"] == "rate_limited"
    assert health[0] == 200
    assert back == (1, None)
    assert "Traceback" not in server.log()
