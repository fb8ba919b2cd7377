"""realtime.client and `manage.py listen` against real servers: `serve --workers 2` with a
private Redis and the dev CA. TLS verified (and refused for a certificate it cannot verify),
subscribe and resume across a worker killed with SIGKILL (none lost, none doubled), ping,
listen's lines across a kill, its errors and its Ctrl-C, its session (renewed past its ttl
while it runs, deleted on SIGHUP, expired after a SIGKILL, never sent over ws:// off the host);
publish (idempotent across a dropped connection, ephemeral, refused) and call (reply, errors,
timeout) on a second server with the tests' two-way app (tests/two_way). In-process: backoff,
URLs, cookies, no Django imported."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
import uuid

import pytest

from realtime import client
from realtime.common.rates import TokenBucket
from tests.helpers import (
    PYTHON,
    ROOT,
    create_users,
    free_port,
    logged_in,
    receive_json,
    run_in_shell,
    slot,
    wait_until,
    ws_connect,
)

STARTED = re.compile(r"worker (w\d+) started \(pid (\d+)\)")


# --- In-process -----------------------------------------------------------------------------


def test_backoff_is_full_jitter_doubling_from_half_a_second_to_30_s_as_the_page_does():
    assert client.backoff_delay(0, lambda: 0.999) == pytest.approx(0.4995)
    assert client.backoff_delay(3, lambda: 1.0) == 4.0
    assert client.backoff_delay(50, lambda: 1.0) == 30.0
    assert client.backoff_delay(5, lambda: 0.0) == 0.0


def test_urls_and_origins():
    assert client.websocket_url("https://localhost:8443") == "wss://localhost:8443/ws/"
    assert client.websocket_url("http://a.test/") == "ws://a.test/ws/"
    assert client.websocket_url("wss://a.test/other/?x=1") == "wss://a.test/other/?x=1"
    assert client.origin_for("wss://a.test:8443/ws/") == "https://a.test:8443"
    with pytest.raises(ValueError):
        client.websocket_url("ftp://a.test/")


def test_a_context_that_does_not_verify_is_refused():
    lax = ssl.create_default_context()
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="verifies certificates"):
        client.tls_context(lax)
    with pytest.raises(ValueError, match="ws://"):
        client.Realtime("ws://localhost:1/ws/", ssl=ssl.create_default_context())


def test_a_cookie_cannot_smuggle_another_cookie_or_header():
    assert client.cookie_header({"sessionid": "abc"}) == "sessionid=abc"
    for jar in ({"sessionid": "a; is_admin=1"}, {"sessionid": "a\r\nX: y"}, {"a=b": "c"}):
        with pytest.raises(ValueError):
            client.cookie_header(jar)


def test_positions_are_parsed_in_each_form():
    assert client.parse_position("ab12:7") == ("ab12", 7)
    assert client.parse_position({"epoch": "ab12", "offset": 7}) == ("ab12", 7)
    assert client.parse_position(("ab12", 7)) == ("ab12", 7)
    with pytest.raises(ValueError):
        client.parse_position("7")


def test_the_client_imports_no_django():
    """A script outside any Django project can use it."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'django' or name.startswith('django.'):\n"
        "            raise ImportError('django imported: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import realtime.client\n"
    )
    result = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- Against a scripted server: the client's side of the protocol, deterministically ---------


class Scripted:
    """A /ws/ server speaking the spec's wire format over plain ws://, with a store of
    published messages deduplicated by id, that drops the socket when told to, and the
    server's message budget (its TokenBucket) and size limit (close 1009)."""

    def __init__(self, protocol: int = 3) -> None:
        self.protocol = protocol
        self.user: str | None = "alice"
        self.limits: dict | None = {"max_message": 65536, "rate": 0, "burst": 20}
        self.max_size = 65536  # a larger message: closed with 1009, as the server does
        self.received: list[dict] = []
        self.stored: dict[str, int] = {}  # id -> offset
        self.messages: list[dict] = []  # the topic's history
        self.drop_on: set[str] = set()  # message types after which the socket is dropped once
        self.refuse: list[str] = []  # error codes answered to the next publishes, in turn
        self.hold = False  # publishes are received but not answered
        self.over_rate = 0  # messages the server's budget would have dropped
        self.open: set = set()
        self.sockets = 0

    def drop_all(self) -> None:
        for ws in self.open:
            ws.transport.abort()

    async def handler(self, ws) -> None:
        self.sockets += 1
        self.open.add(ws)
        try:
            await self.serve(ws)
        finally:
            self.open.discard(ws)

    async def serve(self, ws) -> None:
        welcome = {"type": "welcome", "protocol": self.protocol, "idle_timeout": 0}
        if self.limits is not None:
            welcome["limits"] = self.limits
        await ws.send(json.dumps({**welcome, "user": self.user}))
        rate = (self.limits or {}).get("rate")
        bucket = TokenBucket(rate, self.limits["burst"]) if rate else None
        async for text in ws:
            if len(text.encode()) > self.max_size:
                await ws.close(1009, "Message too big")
                return
            message = json.loads(text)
            self.received.append(message)
            kind = message["type"]
            if bucket is not None and not bucket.take():
                self.over_rate += 1
            if kind in self.drop_on:
                self.drop_on.discard(kind)
                ws.transport.abort()  # gone before any answer, as a killed worker
                return
            if kind == "publish" and (self.hold or self.refuse):
                if not self.hold:
                    error = {"type": "error", "code": self.refuse.pop(0), "request": "publish"}
                    await ws.send(json.dumps({**error, "topic": "room", "id": message["id"]}))
                continue
            if kind == "subscribe":
                since = (message.get("since") or {}).get("offset", len(self.messages))
                answer = {"type": "subscribed", "topic": message["topic"], "epoch": "e"}
                await ws.send(json.dumps({**answer, "offset": since}))
                for stored in self.messages[since:]:
                    await ws.send(json.dumps(stored))
            elif kind == "publish":
                if message["id"] not in self.stored:
                    self.stored[message["id"]] = offset = len(self.messages) + 1
                    self.messages.append(
                        {
                            "type": "message",
                            "topic": message["topic"],
                            "data": message["data"],
                            "offset": offset,
                        }
                    )
                    await ws.send(json.dumps(self.messages[-1]))
                answer = {"type": "published", "topic": message["topic"], "id": message["id"]}
                await ws.send(json.dumps({**answer, "offset": self.stored[message["id"]]}))
            elif kind == "call" and message["name"] == "echo":
                await ws.send(
                    json.dumps({"type": "reply", "ref": message["ref"], "data": message["data"]})
                )
            elif kind == "call":
                error = {"code": "not_found", "detail": "No such call."}
                await ws.send(json.dumps({"type": "reply", "ref": message["ref"], "error": error}))
            elif kind == "ping":
                await ws.send(json.dumps({"type": "pong"}))


@contextlib.asynccontextmanager
async def scripted(server: Scripted):
    from websockets.asyncio.server import serve as ws_serve

    async with ws_serve(server.handler, "127.0.0.1", 0) as running:
        port = running.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/"


def test_a_publish_whose_socket_dropped_is_sent_again_with_its_id_and_a_call_is_not():
    server = Scripted()
    server.drop_on = {"publish"}

    async def scenario():
        async with scripted(server) as url, client.connect(url) as rt:
            subscription = await rt.subscribe("room")
            assert await rt.publish("room", {"text": "once"}, id="m-1") == 1
            [message] = await take(subscription, 1)
            assert message["data"] == {"text": "once"}
            await nothing_more(subscription, 0.3)
            publishes = [m for m in server.received if m["type"] == "publish"]
            assert [m["id"] for m in publishes] == ["m-1", "m-1"]  # resent once, stored once
            resubscribe = [m for m in server.received if m["type"] == "subscribe"][-1]
            assert resubscribe["since"] == {"epoch": "e", "offset": 0}
            server.drop_on = {"call"}
            with pytest.raises(client.CallError) as caught:
                await rt.call("echo", 1)
            assert caught.value.code == "disconnected"
            assert [m["type"] for m in server.received].count("call") == 1
            assert await rt.call("echo", {"a": 1}) == {"a": 1}
            with pytest.raises(client.CallError, match="not_found"):
                await rt.call("nothing")
            assert server.sockets == 3

    asyncio.run(scenario())


def test_publish_and_call_refuse_a_server_of_protocol_2_at_once():
    async def scenario():
        async with scripted(Scripted(protocol=2)) as url, client.connect(url) as rt:
            for attempt in (rt.publish("room", 1), rt.call("echo", 1)):
                with pytest.raises(client.RealtimeError, match="protocol 2"):
                    await attempt

    asyncio.run(scenario())


def test_a_server_that_no_longer_serves_its_protocol_stops_it_for_good():
    async def reload(ws) -> None:
        await ws.send(json.dumps({"type": "reload", "reason": "protocol", "detail": "Upgrade."}))
        await ws.close(4010, "Protocol version not served")

    async def scenario():
        from websockets.asyncio.server import serve as ws_serve

        async with ws_serve(reload, "127.0.0.1", 0) as running:
            url = f"ws://127.0.0.1:{running.sockets[0].getsockname()[1]}/ws/"
            with pytest.raises(client.ProtocolUnsupported, match="Upgrade"):
                async with client.connect(url):
                    pass

    asyncio.run(scenario())


async def until(condition, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def publishes_of(server: Scripted) -> list[str]:
    return [m["id"] for m in server.received if m["type"] == "publish"]


def test_a_message_over_the_welcomes_max_message_is_refused_here_and_never_sent():
    server = Scripted()
    server.limits = {"max_message": 200, "rate": 0, "burst": 20, "publish_id_ttl": 600}

    async def scenario():
        async with scripted(server) as url, client.connect(url) as rt:
            big = "é" * 90  # 90 characters, 180 bytes of UTF-8 (and escaped as JSON: 540)
            with pytest.raises(client.PublishError) as refused:
                await rt.publish("room", big, id="m-big")
            assert refused.value.code == "too_large" and refused.value.id == "m-big"
            with pytest.raises(client.CallError, match="too_large"):
                await rt.call("echo", big)
            with pytest.raises(client.ServerError, match="too_large"):
                await rt.send({"type": "presence_update", "topic": "room", "meta": {"s": big}})
            assert await rt.publish("room", "e" * 90) == 1
            assert publishes_of(server) == [publishes_of(server)[0]] and server.sockets == 1

    asyncio.run(scenario())


def test_after_close_1009_a_publish_of_unchecked_size_fails_too_large_and_is_not_sent_again():
    server = Scripted()
    server.limits = None  # sizes unknown to the client
    server.max_size = 1000

    async def scenario():
        async with scripted(server) as url, client.connect(url) as rt:
            with pytest.raises(client.PublishError) as refused:
                await rt.publish("room", "x" * 2000, id="m-big")
            assert refused.value.code == "too_large" and refused.value.id == "m-big"
            await until(lambda: rt.connected)
            assert await rt.publish("room", "small", id="m-small") == 1
            # m-big closed its socket (1009) once and was not sent again.
            assert publishes_of(server) == ["m-small"] and server.sockets == 2

    asyncio.run(scenario())


def test_publishes_resent_after_a_reconnect_keep_to_the_welcomes_rate(monkeypatch):
    """20 publishes in flight when the socket drops, resent with the subscribe: the server's
    budget (rate 40 a second, burst 4) never drops one."""
    server = Scripted()
    server.limits = {"max_message": 65536, "rate": 40, "burst": 4, "publish_id_ttl": 600}

    async def scenario():
        async with scripted(server) as url, client.connect(url) as rt:
            await rt.subscribe("room")
            server.hold = True
            publishing = [
                asyncio.create_task(rt.publish("room", n, id=f"m-{n}")) for n in range(20)
            ]
            await until(lambda: len(publishes_of(server)) == 20)
            server.hold = False
            server.drop_all()
            assert sorted(await asyncio.gather(*publishing)) == list(range(1, 21))
            kinds = [m["type"] for m in server.received]
            assert kinds[21] == "subscribe" and kinds.count("publish") == 40
            assert server.over_rate == 0

    asyncio.run(scenario())


def test_unavailable_timeout_and_rate_limited_send_the_publish_again_with_its_id(monkeypatch):
    monkeypatch.setattr(client, "RETRY_BASE", 0.05)
    server = Scripted()
    server.refuse = ["unavailable", "timeout", "rate_limited"]

    async def scenario():
        async with scripted(server) as url, client.connect(url) as rt:
            started = time.monotonic()
            assert await rt.publish("room", "once", id="m-1") == 1
            assert time.monotonic() - started >= 0.05 + 0.1 + 0.2  # doubling
            assert publishes_of(server) == ["m-1"] * 4 and len(server.messages) == 1
            server.refuse = ["forbidden"]
            with pytest.raises(client.PublishError) as refused:
                await rt.publish("room", "no", id="m-2")
            assert (refused.value.code, refused.value.id) == ("forbidden", "m-2")

    asyncio.run(scenario())


def test_a_publish_older_than_publish_id_ttl_fails_expired_instead_of_being_sent_again():
    server = Scripted()
    server.limits = {"max_message": 65536, "rate": 0, "burst": 20, "publish_id_ttl": 0.3}

    async def scenario():
        async with scripted(server) as url, client.connect(url) as rt:
            server.hold = True
            publishing = asyncio.create_task(rt.publish("room", "late", id="m-1"))
            await until(lambda: publishes_of(server) == ["m-1"])
            await asyncio.sleep(0.3)  # past the TTL while unanswered
            server.hold = False
            server.drop_all()
            with pytest.raises(client.PublishError) as expired:
                await publishing
            assert (expired.value.code, expired.value.id) == ("expired", "m-1")
            assert publishes_of(server) == ["m-1"]

    asyncio.run(scenario())


def test_an_anonymous_sockets_publish_in_flight_when_it_drops_fails_disconnected():
    """The server remembers an anonymous publisher's ids on its socket only."""
    server = Scripted()
    server.user = None

    async def scenario():
        async with scripted(server) as url, client.connect(url) as rt:
            server.hold = True
            publishing = asyncio.create_task(rt.publish("room", "x", id="m-1"))
            await until(lambda: publishes_of(server) == ["m-1"])
            server.hold = False
            server.drop_all()
            with pytest.raises(client.PublishError) as dropped:
                await publishing
            assert (dropped.value.code, dropped.value.id) == ("disconnected", "m-1")
            await until(lambda: rt.connected)
            assert await rt.publish("room", "y", id="m-2") == 1
            assert publishes_of(server) == ["m-1", "m-2"]

    asyncio.run(scenario())


# --- Servers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def users(server_env):
    return create_users(server_env, {"alice": True, "bob": False})


def serve(start, redis_server, **env):
    port = free_port()
    args = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port)]
    server = start(args, port, REDIS_URL=redis_server.url, **env)
    wait_until(lambda: len(worker_pids(server)) == 2, "both workers started")
    return server


@pytest.fixture(scope="module")
def served(start, redis_server, users):
    return serve(start, redis_server)


@pytest.fixture(scope="module")
def two_way(start, private_redis, users):
    """The project plus tests/two_way (a topic clients publish to, calls): its own Redis."""
    return serve(start, private_redis(), DJANGO_SETTINGS_MODULE="tests.two_way.settings")


def worker_pids(server) -> dict[str, int]:
    return {name: int(pid) for name, pid in STARTED.findall(server.log())}


def kill_worker(server, worker: str) -> None:
    """SIGKILL the worker that holds a socket (its welcome's `worker`); wait for its restart."""
    name = slot(worker)
    pid = worker_pids(server)[name]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: worker_pids(server)[name] != pid, f"{name} restarted", timeout=20)


def url_of(server) -> str:
    return f"wss://localhost:{server.port}/ws/"


def session_key(server, client_tls, users, name: str) -> str:
    session = logged_in(server.port, client_tls, name, users)
    return next(c.value for c in session.cookies if c.name == "sessionid")


def send(server_env, server, redis_url: str, topic: str, values: list) -> None:
    """topics.send from another process (`manage.py shell`), as app code would."""
    code = (
        "from realtime import topics\n"
        f"for value in {values!r}:\n"
        f"    topics.send({topic!r}, {{'n': value}}, event='tick')\n"
    )
    run_in_shell({**server_env, "REDIS_URL": redis_url}, code)


async def take(subscription, count: int, timeout: float = 20) -> list[dict]:
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await anext(subscription))
    return got


async def nothing_more(subscription, wait: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(subscription), wait)


# --- Connecting ---------------------------------------------------------------------------------


def test_connects_verifying_the_dev_ca_and_pings(served, dev_certs, client_tls, users):
    key = session_key(served, client_tls, users, "bob")

    async def scenario():
        async with client.connect(url_of(served), ssl=str(dev_certs.ca_cert), session=key) as rt:
            assert rt.welcome["type"] == "welcome" and rt.welcome["secure"] is True
            assert rt.welcome["user"] == "bob" and rt.welcome["tls"]["version"].startswith("TLS")
            assert await rt.ping() < 5
        async with client.connect(url_of(served), ssl=client_tls) as rt:  # an SSLContext
            assert rt.welcome["user"] is None

    asyncio.run(scenario())


def test_a_certificate_it_cannot_verify_is_refused_with_a_clear_error(served):
    """The system's CAs do not know the dev CA: the connection fails, nothing is sent."""

    async def scenario():
        with pytest.raises(client.ConnectError) as caught:
            async with client.connect(url_of(served)):
                pass
        assert caught.value.tls is True
        assert "did not verify" in str(caught.value) and "never turn verification off" in str(
            caught.value
        )

    asyncio.run(scenario())


def test_a_foreign_origin_and_a_closed_port_say_what_happened(served, client_tls):
    async def scenario():
        with pytest.raises(client.ConnectError, match="HTTP 403") as refused:
            async with client.connect(url_of(served), ssl=client_tls, origin="https://evil.test"):
                pass
        assert refused.value.status == 403
        with pytest.raises(client.ConnectError, match="refused"):
            async with client.connect(f"wss://localhost:{free_port()}/ws/", ssl=client_tls):
                pass

    asyncio.run(scenario())


def test_a_forbidden_topic_is_refused(served, client_tls):
    async def scenario():
        async with client.connect(url_of(served), ssl=client_tls) as rt:
            with pytest.raises(client.SubscribeError) as caught:
                await rt.subscribe("orders.1")  # staff only
            assert caught.value.code == "forbidden"

    asyncio.run(scenario())


# --- Subscribe and resume -------------------------------------------------------------------


def test_subscribe_resumes_after_its_worker_is_killed_none_lost_none_doubled(
    served, client_tls, users, server_env, redis_server
):
    key = session_key(served, client_tls, users, "alice")
    states: list[str] = []

    async def scenario():
        options = {"ssl": client_tls, "session": key, "on_state": lambda s, i: states.append(s)}
        async with client.connect(url_of(served), **options) as rt:
            subscription = await rt.subscribe("orders.21")
            await asyncio.to_thread(send, server_env, served, redis_server.url, "orders.21", [1, 2])
            first = await take(subscription, 2)
            await asyncio.to_thread(kill_worker, served, rt.welcome["worker"])
            # Sent while the client is away (reconnecting), then after.
            await asyncio.to_thread(send, server_env, served, redis_server.url, "orders.21", [3, 4])
            rest = await take(subscription, 2)
            await asyncio.to_thread(send, server_env, served, redis_server.url, "orders.21", [5])
            rest += await take(subscription, 1)
            await nothing_more(subscription)
            assert [m["data"]["n"] for m in first + rest] == [1, 2, 3, 4, 5]
            offsets = [m["offset"] for m in first + rest]
            assert offsets == list(range(offsets[0], offsets[0] + 5))
            assert {m["event"] for m in first + rest} == {"tick"}
            assert rt.welcome["user"] == "alice"
            assert await rt.ping() < 5

    asyncio.run(scenario())
    assert states.count("open") >= 2 and "closed" in states


def test_subscribe_since_a_position_replays_what_came_after_it(
    served, client_tls, users, server_env, redis_server
):
    key = session_key(served, client_tls, users, "alice")

    async def scenario():
        async with client.connect(url_of(served), ssl=client_tls, session=key) as rt:
            subscription = await rt.subscribe("orders.22")
            start = subscription.position()
            await asyncio.to_thread(send, server_env, served, redis_server.url, "orders.22", [1, 2])
            await take(subscription, 2)
            await subscription.close()
            with pytest.raises(StopAsyncIteration):
                await anext(subscription)
            again = await rt.subscribe("orders.22", f"{start[0]}:{start[1] + 1}")
            [replayed] = await take(again, 1)
            assert replayed["data"] == {"n": 2}

    asyncio.run(scenario())


# --- manage.py listen -------------------------------------------------------------------------


class Listening:
    """`manage.py listen` as an operator runs it; its lines collected as they come."""

    def __init__(self, env: dict, *args: str) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "manage.py", "listen", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _collect(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def workers(self) -> list[str]:
        return [m.group(1) for line in self.err if (m := re.search(r"worker (\S+) as", line))]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=15)
        for reader in self.readers:
            reader.join(timeout=5)
        self.process.stdout.close()
        self.process.stderr.close()
        return code


def test_listen_prints_each_message_once_across_a_worker_kill_and_exits_0_on_ctrl_c(
    served, server_env, redis_server, users
):
    """As alice (a session the command writes; the topic's authorize still runs), trusting
    the dev CA as DEBUG does (devcert's instructions), JSON lines."""
    env = {**server_env, "DJANGO_DEBUG": "1"}
    listen = Listening(env, "orders.23", "--user", "alice", "--url", url_of(served), "--json")
    try:
        wait_until(lambda: any("listening to orders.23" in e for e in listen.err), "listening")
        send(server_env, served, redis_server.url, "orders.23", [1, 2, 3])
        wait_until(lambda: len(listen.out) >= 3, "three lines")
        kill_worker(served, listen.workers()[0])
        send(server_env, served, redis_server.url, "orders.23", [4, 5])
        wait_until(lambda: len(listen.workers()) >= 2, "reconnected")
        send(server_env, served, redis_server.url, "orders.23", [6])
        wait_until(lambda: len(listen.out) >= 6, "six lines", timeout=30)
        assert listen.stop() == 0, listen.err
    finally:
        listen.stop()
    messages = [json.loads(line) for line in listen.out]
    assert [m["data"]["n"] for m in messages] == [1, 2, 3, 4, 5, 6], listen.out
    assert [m["offset"] for m in messages] == [1, 2, 3, 4, 5, 6]
    assert any("connection lost" in line for line in listen.err)
    assert "as alice" in listen.err[0]
    remaining = run_in_shell(
        env,
        "from django.contrib.sessions.models import Session\n"
        "print(sum('realtime_listen' in s.get_decoded() for s in Session.objects.all()))",
    )
    assert remaining.split()[-1] == "0", "the command's session outlived it"


def test_listen_lines_are_offset_event_from_data(served, server_env, redis_server, dev_certs):
    listen = Listening(
        server_env, "news.client", "--url", url_of(served), "--ca", str(dev_certs.ca_cert)
    )
    try:
        wait_until(lambda: any("listening" in e for e in listen.err), "listening")
        send(server_env, served, redis_server.url, "news.client", [7])
        wait_until(lambda: listen.out, "a line")
    finally:
        assert listen.stop() == 0
    assert listen.out == ['1 tick - {"n": 7}']
    assert "as anonymous" in listen.err[0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("refused", "Connection refused"),
        ("untrusted", "did not verify"),
        ("forbidden", "forbidden"),
        ("no user", "No user 'nobody'"),
        ("in clear", "would send the session in clear"),
    ],
)
def test_listen_says_why_it_cannot_and_exits_non_zero(served, server_env, case, expected):
    args = {
        "refused": ["news.x", "--url", f"wss://localhost:{free_port()}/ws/"],
        "untrusted": ["news.x", "--url", url_of(served)],  # no --ca, debug off: system CAs
        "forbidden": ["orders.1", "--url", url_of(served), "--user", "bob"],
        "no user": ["news.x", "--user", "nobody"],
        "in clear": ["news.x", "--user", "alice", "--url", "ws://example.com:8000/ws/"],
    }[case]
    env = {**server_env, "DJANGO_DEBUG": "1"} if case in ("forbidden", "refused") else server_env
    result = subprocess.run(
        [PYTHON, "manage.py", "listen", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_listen_sends_a_session_over_ws_only_to_a_loopback_address():
    from realtime.management.commands.listen import in_clear_off_this_host

    for local in (
        "ws://localhost:8000/ws/",
        "ws://127.0.0.1:8000",
        "http://[::1]:8000",
        "ws://127.0.0.2/ws/",
    ):
        assert not in_clear_off_this_host(local), local
    for secure in ("wss://example.com/ws/", "https://10.0.0.1:8443"):
        assert not in_clear_off_this_host(secure), secure
    for remote in (
        "ws://example.com/ws/",
        "http://10.0.0.1:8000",
        "ws://[2001:db8::1]/ws/",
        "ws://localhost.example.com/",
    ):
        assert in_clear_off_this_host(remote), remote


def listen_sessions(env: dict) -> list[tuple[str, float]]:
    """The sessions `manage.py listen` wrote, expired ones too: (key, seconds left)."""
    printed = run_in_shell(
        env,
        "from django.contrib.sessions.models import Session\n"
        "from django.utils import timezone\n"
        "for s in Session.objects.all():\n"
        "    if 'realtime_listen' in s.get_decoded():\n"
        "        print(s.session_key, (s.expire_date - timezone.now()).total_seconds())\n",
    )
    return [(key, float(left)) for key, left in (line.split() for line in printed.splitlines())]


def delete_session(env: dict, key: str) -> None:
    run_in_shell(
        env,
        "from django.contrib.sessions.models import Session\n"
        f"Session.objects.filter(session_key={key!r}).delete()\n",
    )


async def signed_in_as(server, ca, key: str) -> str | None:
    """Whom the session `key` signs in on a new socket (None: nobody)."""
    async with client.connect(url_of(server), ssl=str(ca), session=key) as rt:
        return rt.welcome["user"]


def test_listen_renews_its_session_past_its_ttl_and_deletes_it_on_sighup(
    served, server_env, dev_certs, users
):
    """--session-ttl 2, renewed every half second: the session still signs alice in, and the
    command's own socket stays open, well past its first end; then SIGHUP (the SSH
    connection it ran in dropped) ends the command with the session deleted."""
    env = {**server_env, "DJANGO_DEBUG": "1"}
    args = ("news.hup", "--user", "alice", "--url", url_of(served), "--session-ttl", "2")
    listen = Listening(env, *args)
    key = None
    try:
        wait_until(lambda: any("listening to news.hup" in e for e in listen.err), "listening")
        began = time.monotonic()
        [(key, left)] = listen_sessions(env)

        async def past_its_ttl() -> list:
            seen = []
            while time.monotonic() - began < 4:  # twice its ttl
                seen.append(await signed_in_as(served, dev_certs.ca_cert, key))
                await asyncio.sleep(0.25)
            return seen

        seen = asyncio.run(past_its_ttl())
        listen.process.send_signal(signal.SIGHUP)
        code = listen.process.wait(timeout=15)
    finally:
        listen.stop()
    assert 0 < left <= 2
    assert len(seen) >= 3 and set(seen) == {"alice"}, seen  # the last at twice its ttl
    assert code == 0, listen.err
    assert not any("connection lost" in line for line in listen.err), listen.err
    assert listen_sessions(env) == [], "SIGHUP left the command's session behind"
    assert asyncio.run(signed_in_as(served, dev_certs.ca_cert, key)) is None


def test_a_session_listen_could_not_delete_ends_at_its_ttl(served, server_env, dev_certs, users):
    """SIGKILL: no cleanup can run; the session it left signs nobody in once its ttl (2 s
    here, an hour by default) has passed since its last renewal."""
    env = {**server_env, "DJANGO_DEBUG": "1"}
    args = ("news.kill", "--user", "alice", "--url", url_of(served), "--session-ttl", "2")
    listen = Listening(env, *args)
    key = None
    try:
        wait_until(lambda: any("listening to news.kill" in e for e in listen.err), "listening")
        [(key, _)] = listen_sessions(env)
        before = asyncio.run(signed_in_as(served, dev_certs.ca_cert, key))
        listen.process.kill()
        listen.process.wait(timeout=15)
        killed = time.monotonic()
        wait_until(
            lambda: asyncio.run(signed_in_as(served, dev_certs.ca_cert, key)) is None,
            "the session to expire",
            timeout=10,
        )
        took = time.monotonic() - killed
        assert [k for k, _ in listen_sessions(env)] == [key]  # still stored, but expired
    finally:
        listen.stop()
        if key is not None:
            delete_session(env, key)
    print(f"\nthe session of a killed listen (--session-ttl 2) signed nobody in {took:.1f} s later")
    assert before == "alice"
    assert took < 3.5  # its ttl since the last renewal (at most 0.5 s before the kill), and a poll


# --- Publish and call (tests/two_way: the server side of issue 27) ---------------------------


def cookie_of(server, client_tls, users, name):
    return session_key(server, client_tls, users, name)


def test_publish_is_delivered_with_its_sender_and_answered_its_offset(two_way, client_tls, users):
    alice = cookie_of(two_way, client_tls, users, "alice")
    bob = cookie_of(two_way, client_tls, users, "bob")

    async def scenario():
        async with (
            client.connect(url_of(two_way), ssl=client_tls, session=alice) as a,
            client.connect(url_of(two_way), ssl=client_tls, session=bob) as b,
        ):
            assert a.welcome["protocol"] == 3
            heard = await b.subscribe("lobby.one")
            offset = await a.publish("lobby.one", {"text": " hi "}, event="said", id="m-1")
            [message] = await take(heard, 1)
            assert message["offset"] == offset and message["id"] == "m-1"
            assert message["data"] == {"text": "hi"} and message["event"] == "said"
            assert message["from"]["username"] == "alice"
            # The same id again (a retry): the first offset, delivered once.
            assert await a.publish("lobby.one", {"text": " hi "}, event="said", id="m-1") == offset
            await nothing_more(heard)

    asyncio.run(scenario())


def test_a_publish_in_flight_when_its_worker_dies_is_sent_again_and_stored_once(
    two_way, client_tls, users
):
    """The worker is stopped (SIGSTOP) so that the publish is sent and never answered, then
    killed: the client reconnects, resends the same id, and the message arrives once."""
    alice = cookie_of(two_way, client_tls, users, "alice")
    bob = cookie_of(two_way, client_tls, users, "bob")

    async def scenario():
        async with (
            client.connect(url_of(two_way), ssl=client_tls, session=alice) as a,
            client.connect(url_of(two_way), ssl=client_tls, session=bob) as b,
        ):
            heard = await b.subscribe("lobby.two")
            pid = worker_pids(two_way)[slot(a.welcome["worker"])]
            os.kill(pid, signal.SIGSTOP)
            publishing = asyncio.create_task(a.publish("lobby.two", {"text": "once"}))
            await asyncio.sleep(0.3)  # written to the stopped worker's socket
            assert not publishing.done()
            os.kill(pid, signal.SIGKILL)
            offset = await asyncio.wait_for(publishing, 30)
            messages = await take(heard, 1)
            await nothing_more(heard, 1.0)
            assert [(m["data"], m["offset"]) for m in messages] == [({"text": "once"}, offset)]

    asyncio.run(scenario())


def test_an_id_published_before_is_answered_its_first_offset(two_way, client_tls, users):
    """What a client that lost the answer sees when it sends the id again."""
    alice = cookie_of(two_way, client_tls, users, "alice")
    message_id = uuid.uuid4().hex

    async def scenario():
        headers = {"Cookie": f"sessionid={alice}"}
        async with ws_connect(url_of(two_way), client_tls, additional_headers=headers) as raw:
            await receive_json(raw)
            await raw.send(
                json.dumps(
                    {
                        "type": "publish",
                        "topic": "lobby.three",
                        "data": {"text": "x"},
                        "id": message_id,
                    }
                )
            )
            first = await receive_json(raw)
        async with client.connect(url_of(two_way), ssl=client_tls, session=alice) as rt:
            assert await rt.publish("lobby.three", {"text": "x"}, id=message_id) == first["offset"]

    asyncio.run(scenario())


def test_ephemeral_publish_reaches_the_others_only_and_has_no_offset(two_way, client_tls, users):
    alice = cookie_of(two_way, client_tls, users, "alice")
    bob = cookie_of(two_way, client_tls, users, "bob")

    async def scenario():
        async with (
            client.connect(url_of(two_way), ssl=client_tls, session=alice) as a,
            client.connect(url_of(two_way), ssl=client_tls, session=bob) as b,
        ):
            mine, theirs = await a.subscribe("lobby.four"), await b.subscribe("lobby.four")
            assert await a.publish("lobby.four", {"text": "typing"}, ephemeral=True) is None
            [message] = await take(theirs, 1)
            assert message["ephemeral"] is True and "offset" not in message
            await nothing_more(mine)

    asyncio.run(scenario())


def test_a_refused_publish_raises_its_code(two_way, client_tls, users):
    bob = cookie_of(two_way, client_tls, users, "bob")

    async def scenario():
        async with client.connect(url_of(two_way), ssl=client_tls, session=bob) as rt:
            with pytest.raises(client.PublishError) as rejected:
                await rt.publish("lobby.five", {"text": "  "})
            assert rejected.value.code == "rejected" and "text" in rejected.value.detail
            with pytest.raises(client.PublishError) as forbidden:
                await rt.publish("news.five", {"text": "no publish function"})
            assert forbidden.value.code == "forbidden"

    asyncio.run(scenario())


def test_calls_reply_or_raise_their_error(two_way, client_tls, users):
    bob = cookie_of(two_way, client_tls, users, "bob")

    async def scenario():
        async with client.connect(url_of(two_way), ssl=client_tls, session=bob) as rt:
            assert await rt.call("test.echo", {"a": 1}) == {"echo": {"a": 1}, "user": "bob"}
            for name, code in (("test.refuse", "rejected"), ("test.missing", "not_found")):
                with pytest.raises(client.CallError) as caught:
                    await rt.call(name, {})
                assert caught.value.code == code
            started = time.monotonic()
            with pytest.raises(client.CallError) as late:
                await rt.call("test.slow", 3, timeout=0.5)
            assert late.value.code == "timeout" and time.monotonic() - started < 2
            assert await rt.call("test.echo", 2) == {"echo": 2, "user": "bob"}

    asyncio.run(scenario())


def test_a_call_in_flight_when_the_connection_drops_is_not_sent_again(two_way, client_tls, users):
    bob = cookie_of(two_way, client_tls, users, "bob")

    async def scenario():
        async with client.connect(url_of(two_way), ssl=client_tls, session=bob) as rt:
            calling = asyncio.create_task(rt.call("test.slow", 5, timeout=20))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(kill_worker, two_way, rt.welcome["worker"])
            with pytest.raises(client.CallError) as caught:
                await calling
            assert caught.value.code == "disconnected"
            async with asyncio.timeout(20):
                while not rt.connected:
                    await asyncio.sleep(0.05)
            assert await rt.call("test.echo", 3) == {"echo": 3, "user": "bob"}

    asyncio.run(scenario())
