"""Prometheus metrics at /metrics against real servers: `serve --workers 2` over TLS with its
own Redis, each metric read before and after the event that moves it. A scrape, whichever
worker the kernel hands it to, reports the whole host; the access rules are checked in
process and on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from realtime.checks import check_metrics_access
from realtime.ops import metrics  # defines the metrics in REGISTRY (the server floor's too)
from tests.helpers import (
    PYTHON,
    ROOT,
    close_code,
    free_port,
    open_on_both_workers,
    receive_json,
    run_in_shell,
    ws_connect,
)
from tests.helpers import wait_until_async as until

TOKEN = "m" * 40


def scrape(port: int, tls=None, token: str | None = None, scheme: str = "https"):
    """(status, {(name, labels): value}) of one GET /metrics, on a new connection."""
    request = urllib.request.Request(f"{scheme}://localhost:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=tls, timeout=15) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, {}
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return 200, samples


async def scraped_when(port: int, tls, condition, what: str, timeout: float = 20) -> dict:
    """Scrape until `condition(samples)` holds (the server counts as it goes); the samples."""
    deadline = time.monotonic() + timeout
    while True:
        samples = (await asyncio.to_thread(scrape, port, tls))[1]
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def grown(before: dict, after: dict, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def by_worker(samples: dict) -> dict[str, float]:
    counts: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if name == "realtime_open_sockets":
            worker = dict(labels)["worker"].rsplit("-", 1)[-1]
            counts[worker] = counts.get(worker, 0) + value
    return {worker: count for worker, count in counts.items() if count}


@pytest.fixture(scope="module")
def served(start, private_redis):
    redis = private_redis()
    port = free_port()
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)],
        port,
        REDIS_URL=redis.url,
        REALTIME_LOG_FORMAT="json",
        REALTIME_ACCESS_LOG="1",
        REALTIME_FANOUT_CHECK="1",
        REALTIME_FANOUT_CHECK_TIMEOUT="1",
        REALTIME_WS_HANDSHAKE_TIMEOUT="2",
        REALTIME_WS_RATE="2",
        REALTIME_WS_BURST="2",
    )
    return server, redis


def metrics_lines_by_worker(server) -> set[str]:
    """The workers whose access log shows a GET /metrics."""
    workers = set()
    for line in server.log().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if "/metrics" in json.dumps(entry) and entry.get("logger") == "daphne.access":
                workers.add(entry.get("worker", "").rsplit("-", 1)[-1])
    return workers


def test_every_scrape_sees_the_open_sockets_of_both_workers(served, client_tls):
    server, _ = served
    url = f"wss://localhost:{server.port}/ws/"

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            sockets = await open_on_both_workers(url, client_tls, stack, at_least=6)
            opened = {w: sum(1 for _, s in sockets if s == w) for _, w in sockets}
            scrapes = [scrape(server.port, client_tls)[1] for _ in range(4)]
            while metrics_lines_by_worker(server) != {"w1", "w2"} and len(scrapes) < 60:
                scrapes.append(scrape(server.port, client_tls)[1])
                await asyncio.sleep(0.05)  # the access log line is written after the answer
            for socket_, worker in sockets:
                if worker == "w1":
                    await socket_.close()
            after = await scraped_when(
                server.port,
                client_tls,
                lambda s: by_worker(s) == {"w2": opened["w2"]},
                "w1's closed sockets to stop counting",
            )
            return opened, scrapes, after

    opened, scrapes, after = asyncio.run(scenario())
    assert all(by_worker(s) == opened for s in scrapes), (opened, [by_worker(s) for s in scrapes])
    assert metrics_lines_by_worker(server) == {"w1", "w2"}  # answered by each, the same totals
    assert by_worker(after) == {"w2": opened["w2"]}
    assert total(scrapes[0], "realtime_open_sockets", scheme="wss", audience="everyone") == sum(
        opened.values()
    )


def test_a_killed_workers_sockets_stop_counting_and_its_totals_stay(served, client_tls):
    server, _ = served
    url = f"wss://localhost:{server.port}/ws/"

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            sockets = await open_on_both_workers(url, client_tls, stack, at_least=6)
            before = scrape(server.port, client_tls)[1]
            pid = worker_pid(server, "w1")
            os.kill(pid, signal.SIGKILL)
            await until(lambda: worker_pid(server, "w1") != pid, 30, "w1 restarted")
            kept = sum(1 for _, w in sockets if w == "w2")
            after = await scraped_when(
                server.port,
                client_tls,
                lambda s: by_worker(s) == {"w2": kept},
                "the killed worker's sockets to stop counting",
            )
            return before, after, kept

    before, after, kept = asyncio.run(scenario())
    assert by_worker(after) == {"w2": kept}
    accepted = ("realtime_handshakes_total", (("outcome", "accepted"), ("reason", "")))
    assert after[accepted] >= before[accepted]  # the killed worker's counts are kept


def worker_pid(server, name: str) -> int:
    lines = [line for line in server.log().splitlines() if f"worker {name} started" in line]
    return int(lines[-1].rsplit("pid ", 1)[1].split(")")[0])


def test_handshakes_refused_by_origin_size_and_deadline_are_counted(served, client_tls):
    server, _ = served
    port = server.port
    before = scrape(port, client_tls)[1]

    async def wrong_origin():
        with contextlib.suppress(Exception):
            async with ws_connect(
                f"wss://localhost:{port}/ws/", client_tls, origin="https://x.example"
            ):
                pass

    asyncio.run(wrong_origin())
    many = b"".join(b"X-Part-%d: %s\r\n" % (n, b"a" * 500) for n in range(40))
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\n"
    answer = exchange(port, client_tls, request + many + b"\r\n")  # 20 KB of headers
    assert answer.startswith(b"HTTP/1.1 400")
    exchange(port, client_tls, request + b"X-Big: " + b"a" * 20_000)  # in one line
    middle = scrape(port, client_tls)[1]
    started = time.monotonic()
    assert exchange(port, client_tls, b"GET /ws/ HTTP/1.1\r\nHost: localhost\r\n") == b""
    assert time.monotonic() - started > 1.5  # dropped at REALTIME_WS_HANDSHAKE_TIMEOUT (2 s)
    after = scrape(port, client_tls)[1]

    def refused(samples, reason):
        return total(samples, "realtime_handshakes_total", outcome="refused", reason=reason)

    assert refused(middle, "origin") == refused(before, "origin") + 1
    assert refused(middle, "size") == refused(before, "size") + 2
    assert refused(after, "deadline") == refused(middle, "deadline") + 1


def exchange(port: int, tls: ssl.SSLContext, data: bytes) -> bytes:
    """Send `data` over a new TLS connection; what comes back until the server closes it."""
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        tls.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        connection.sendall(data)
        connection.settimeout(10)
        received = b""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := connection.recv(4096):
                received += chunk
        return received


def test_messages_deliveries_latency_and_closes_are_counted(served, client_tls, server_env):
    server, redis = served
    port = server.port
    url = f"wss://localhost:{port}/ws/"
    env = {**server_env, "REDIS_URL": redis.url}

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            sockets = await open_on_both_workers(url, client_tls, stack, at_least=4)
            subscriber = sockets[0][0]
            await subscriber.send(json.dumps({"type": "subscribe", "topic": "news.launch"}))
            assert (await receive_json(subscriber))["type"] == "subscribed"
            before = scrape(port, client_tls)[1]
            for socket_, _ in sockets:
                await socket_.send('{"type": "ping"}')
                assert (await receive_json(socket_))["type"] == "pong"
            await asyncio.to_thread(
                run_in_shell,
                env,
                "from realtime import broadcast, topics\n"
                "broadcast.send('counted')\n"
                "topics.send('news.launch', {'n': 1})\n",
            )
            for socket_, _ in sockets:
                assert (await receive_json(socket_))["type"] == "broadcast"
            assert (await receive_json(subscriber))["type"] == "message"
            for _ in range(4):  # over REALTIME_WS_RATE: dropped, answered rate_limited
                await subscriber.send('{"type": "ping"}')
            count = len(sockets)

            def every_ping_counted(samples):
                pings = grown(before, samples, "realtime_messages_total", direction="in")
                return pings == count + 4  # each one ping, then 4 more: answered or dropped

            middle = await scraped_when(port, client_tls, every_ping_counted, "the pings")
            await sockets[1][0].close(code=4321)  # a client's own code: not a series of its own
            for socket_, _ in sockets[2:]:
                await socket_.close()

            def closes_counted(samples):
                normal = grown(middle, samples, "realtime_closes_total", code="1000")
                other = grown(middle, samples, "realtime_closes_total", code="other")
                return normal >= count - 2 and other == 1

            after = await scraped_when(port, client_tls, closes_counted, "the closes")
            return count, before, middle, after

    count, before, middle, after = asyncio.run(scenario())

    def grew(name, samples=middle, **labels):
        return total(samples, name, **labels) - total(before, name, **labels)

    pings = grew("realtime_messages_total", direction="in", type="ping")
    dropped = grew("realtime_messages_total", direction="in", type="rate_limited")
    assert pings + dropped == count + 4 and dropped >= 1  # burst 2, 2 a second
    assert grew("realtime_messages_total", direction="out", type="pong") == pings
    assert grew("realtime_messages_total", direction="out", type="error") == dropped
    assert grew("realtime_messages_total", direction="out", type="broadcast") == count
    assert grew("realtime_messages_total", direction="out", type="message") == 1
    assert grew("realtime_deliveries_total", kind="broadcast") == count
    assert grew("realtime_deliveries_total", kind="topic") == 1
    # Once per message and worker: the broadcast on both, the topic message on one.
    assert grew("realtime_delivery_latency_seconds_count", kind="broadcast") == 2
    assert grew("realtime_delivery_latency_seconds_count", kind="topic") == 1
    latency = grew("realtime_delivery_latency_seconds_sum", kind="broadcast")
    assert 0 < latency < 20
    assert grew("realtime_open_sockets", samples=after) == -(count - 1)


def test_tls_version_and_group_of_new_connections_are_counted(served, dev_certs):
    server, _ = served
    port = server.port

    def connect(*options: str) -> None:
        request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        result = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
             "-CAfile", str(dev_certs.ca_cert), "-verify_return_error", "-quiet", *options],
            input=request, capture_output=True, timeout=30,
        )  # fmt: skip
        assert b"HTTP/1.1 200" in result.stdout, result.stderr

    tls = ssl.create_default_context(cafile=str(dev_certs.ca_cert))
    before = scrape(port, tls)[1]
    connect("-tls1_3", "-groups", "P-384")
    connect("-tls1_2", "-groups", "P-256")  # TLS 1.2 needs the certificate's curve there
    after = scrape(port, tls)[1]

    def grew(version, group):
        labels = {"version": version, "group": group}
        return total(after, "realtime_tls_connections_total", **labels) - total(
            before, "realtime_tls_connections_total", **labels
        )

    assert grew("TLSv1.3", "secp384r1") == 1  # OpenSSL's name for P-384
    assert grew("TLSv1.2", "secp256r1") == 1  # OpenSSL's name for P-256


def test_the_catch_up_and_the_channel_layer_coming_back_are_counted(served, client_tls, server_env):
    server, redis = served
    port = server.port
    url = f"wss://localhost:{port}/ws/"
    env = {**server_env, "REDIS_URL": redis.url}

    async def scenario():
        async with ws_connect(url, client_tls) as socket_:
            await receive_json(socket_)
            before = scrape(port, client_tls)[1]
            redis.stop()

            def both_lost(samples):  # within REALTIME_FANOUT_CHECK + _TIMEOUT
                return grown(before, samples, "realtime_channel_layer_losses_total") == 2

            await scraped_when(port, client_tls, both_lost, "both workers to lose Redis")
            async with ws_connect(url, client_tls) as refused:  # accepted, then closed 1013
                assert await close_code(refused) == 1013
            await asyncio.to_thread(
                run_in_shell, env, "from realtime import broadcast\nbroadcast.send('while away')\n"
            )
            redis.start()
            seen = []

            async def read():
                while True:
                    message = await receive_json(socket_, timeout=60)
                    seen.append(message)
                    if message["type"] == "broadcast":
                        return

            await asyncio.wait_for(read(), 60)

            def back_and_caught_up(samples):
                reconnects = grown(before, samples, "realtime_channel_layer_reconnects_total")
                caught_up = grown(before, samples, "realtime_catchup_deliveries_total")
                return reconnects == 2 and caught_up == 1

            after = await scraped_when(port, client_tls, back_and_caught_up, "the catch-up")
            return before, after, seen

    before, after, seen = asyncio.run(scenario())
    assert seen[-1]["message"] == "while away"

    def grew(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("realtime_channel_layer_losses_total") == 2  # each worker
    assert grew("realtime_channel_layer_reconnects_total") == 2
    assert grew("realtime_catchup_deliveries_total", kind="broadcast") == 1
    refused = {"outcome": "refused", "reason": "layer_lost"}
    assert grew("realtime_handshakes_total", **refused) == 1


# --- Refusals of the per-address caps, and TLS required -------------------------------------


def test_the_per_address_caps_are_counted(start, client_tls, private_redis):
    port = free_port()
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)],
        port,
        REDIS_URL=private_redis().url,
        REALTIME_MAX_CONNECTIONS_PER_ADDRESS="10",
        REALTIME_WS_MAX_PER_CLIENT="2",
    )
    url = f"wss://localhost:{port}/ws/"

    async def sockets_past_the_cap():
        codes = []
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(8):  # at most 2 per worker stay open
                socket_ = await stack.enter_async_context(ws_connect(url, client_tls))
                with contextlib.suppress(ConnectionClosed):
                    await receive_json(socket_)
                    continue
                codes.append(await close_code(socket_))
        return codes

    codes = asyncio.run(sockets_past_the_cap())
    raws = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]  # 10 per worker

    def closed_by_the_server() -> int:  # past the cap: closed at once, before TLS
        readable, _, _ = select.select(raws, [], [], 0)
        return sum(1 for raw in readable if raw.recv(1, socket.MSG_PEEK) == b"")

    deadline = time.monotonic() + 20
    while closed_by_the_server() < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    for raw in raws:
        raw.close()

    def refusals_counted(samples):
        refused = ("realtime_handshakes_total", "refused", "per_address_cap")
        return total(samples, refused[0], outcome=refused[1], reason=refused[2]) >= 10

    samples = asyncio.run(scraped_when(port, client_tls, refusals_counted, "the refusals"))
    refused_sockets = total(
        samples, "realtime_handshakes_total", outcome="refused", reason="sockets_per_address"
    )
    assert len(codes) >= 4 and set(codes) == {1013}  # 2 per worker: however the kernel spread 8
    assert refused_sockets == len(codes)
    refused_tcp = total(
        samples, "realtime_handshakes_total", outcome="refused", reason="per_address_cap"
    )
    assert refused_tcp >= 10
    directories = set(Path(tempfile.gettempdir()).glob("realtime-metrics-*"))
    server.stop()
    gone = directories - set(Path(tempfile.gettempdir()).glob("realtime-metrics-*"))
    assert len(gone) == 1  # the supervisor removed its workers' metric files


def test_a_socket_refused_for_want_of_tls_is_counted(start):
    port = free_port()
    args = [PYTHON, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    server = start(args, port, DJANGO_DEBUG="1", REALTIME_REQUIRE_TLS="1")

    async def plain_socket():
        async with ws_connect(f"ws://localhost:{port}/ws/") as socket_:
            return await close_code(socket_)

    before = scrape(port, scheme="http")[1]
    assert asyncio.run(plain_socket()) == 1008
    after = scrape(port, scheme="http")[1]
    labels = {"outcome": "refused", "reason": "tls_required"}
    assert (
        total(after, "realtime_handshakes_total", **labels)
        == total(before, "realtime_handshakes_total", **labels) + 1
    )
    server.stop()


# --- Who may scrape ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("address", "authorization", "status"),
    [
        ("127.0.0.1", None, 200),
        ("::1", None, 200),
        ("10.1.2.3", None, 403),
        ("10.1.2.3", f"Bearer {TOKEN}", 200),
        ("10.1.2.3", "Bearer " + "x" * 40, 403),
        ("10.1.2.3", f"bearer {TOKEN}", 403),
        ("10.1.2.3", TOKEN, 403),
        ("192.168.7.9", None, 200),  # in an allowed network
    ],
)
def test_metrics_answer_allowed_addresses_and_the_token_only(
    settings, address, authorization, status
):
    settings.REALTIME_METRICS_ALLOWED_ADDRESSES = ["127.0.0.1", "::1", "192.168.7.0/24"]
    settings.REALTIME_METRICS_TOKEN = TOKEN
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    response = Client(REMOTE_ADDR=address).get("/metrics", secure=True, **headers)
    assert response.status_code == status
    if status == 200:
        assert b"realtime_handshakes_total" in response.content
        assert response["Content-Type"].startswith("text/plain; version=")
    else:
        assert b"realtime_" not in response.content


@pytest.mark.django_db
def test_by_default_only_loopback_may_scrape_and_no_token_opens_it(settings):
    response = Client(REMOTE_ADDR="10.1.2.3").get("/metrics", secure=True)
    assert response.status_code == 403
    empty = Client(REMOTE_ADDR="10.1.2.3").get(
        "/metrics", secure=True, HTTP_AUTHORIZATION="Bearer "
    )
    assert empty.status_code == 403
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics", secure=True).status_code == 200


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("REALTIME_METRICS_ALLOWED_ADDRESSES", ["not an address"]),
        ("REALTIME_METRICS_ALLOWED_ADDRESSES", "127.0.0.1"),
        ("REALTIME_METRICS_TOKEN", "short"),
    ],
)
def test_wrong_metrics_settings_are_refused_at_start(settings, setting, value):
    setattr(settings, setting, value)
    [error] = check_metrics_access()
    assert error.id == "realtime.E007" and setting in error.msg


def test_a_scrape_from_elsewhere_is_refused_on_a_real_server(start, client_tls):
    port = free_port()
    server = start(
        [PYTHON, "manage.py", "serve", "--workers", "1", "--port", str(port)],
        port,
        REALTIME_METRICS_ALLOWED_ADDRESSES="10.0.0.0/8",
        REALTIME_METRICS_TOKEN=TOKEN,
    )
    assert scrape(port, client_tls)[0] == 403
    assert scrape(port, client_tls, token="y" * 40)[0] == 403
    status, samples = scrape(port, client_tls, token=TOKEN)
    assert status == 200 and ("realtime_channel_layer_losses_total", ()) in samples
    server.stop()


# --- The sample Grafana dashboard -------------------------------------------------------------


def test_the_grafana_dashboard_queries_only_metrics_that_exist():
    dashboard = json.loads((ROOT / "deploy/grafana/realtime-dashboard.json").read_text())
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    exported = {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("realtime_")
        for suffix in suffixes.get(family.type, [])
    }
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"realtime_[a-z_]+", target["expr"])
    }
    assert queried <= exported, queried - exported
    families = {name.removesuffix("_total").removesuffix("_bucket") for name in queried}
    # Every metric (realtime/ops/metrics.py, realtime/server/prometheus.py) has a panel.
    assert len(families) >= 9


def test_behind_a_proxy_the_address_is_the_one_the_proxy_added(start):
    """`serve --plain` trusts proxy headers; a proxy that appends to X-Forwarded-For (HAProxy's
    `option forwardfor`, many load balancers) keeps what the client wrote first, and daphne's
    REMOTE_ADDR would be that first entry. The address checked is the proxy's entry."""
    port = free_port()
    start(
        [PYTHON, "manage.py", "serve", "--plain", "--workers", "1", "--host", "127.0.0.1",
         "--port", str(port)],
        port,
        DJANGO_TRUST_PROXY_HEADERS="1",
    )  # fmt: skip

    def status(forwarded_for: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
        request.add_header("X-Forwarded-Proto", "https")
        request.add_header("X-Forwarded-For", forwarded_for)
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert status("127.0.0.1, 203.0.113.9") == 403  # the client claimed loopback
    assert status("203.0.113.9") == 403
    # The proxy saw a local client (127.0.0.2; 127.0.0.1 itself is the trusted proxy's address,
    # REALTIME_TRUSTED_PROXIES, so an entry naming it is a proxy hop, not a client).
    assert status("203.0.113.9, 127.0.0.2") == 200


@pytest.mark.parametrize(
    ("code", "label"),
    [(1000, "1000"), (1009, "1009"), (4001, "4001"), (3999, "other"), (4321, "other"),
     (65535, "other"), (None, "other")],
)  # fmt: skip
def test_close_codes_a_client_chooses_cannot_make_series_of_their_own(code, label):
    assert metrics.close_code_label(code) == label
