"""A Python asyncio client for the `/ws/` protocol (docs/client.md), on the `websockets` library.

    from realtime import client

    async with client.connect("wss://app.example.org/ws/", session=SESSION_KEY) as rt:
        print(rt.welcome["user"])
        subscription = await rt.subscribe("chat.lobby")
        offset = await rt.publish("chat.lobby", {"text": "hello"})
        reply = await rt.call("cart.add", {"sku": "A-1"}, timeout=10)
        async for message in subscription:
            print(message["offset"], message["data"])

It imports no Django, so that a script outside any Django project can use it. TLS is always
verified (the system's CAs by default; a CA file or an `ssl.SSLContext` that verifies). A dropped
connection is reopened with full-jitter backoff, as `realtime.mjs` does (0.5 s doubling to
30 s, reset after 10 s open); each subscription then resumes from the last offset it delivered,
and each publish not yet answered is sent again with the same `id` (the server stores it once
and answers the first offset); so is one answered `unavailable`, `timeout` or `rate_limited`,
after a backoff. It keeps to the welcome's `limits`: what it sends is paced to the server's
rate, a message larger than the server takes is refused here (`too_large`), and a publish is
not sent again once the server may have forgotten its id (`expired`), nor an anonymous
socket's after that socket dropped (`disconnected`). A call is never sent twice: one in
flight when the connection drops raises `CallError("disconnected")`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import ssl as ssl_module
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

# realtime.common imports nothing but itself, and no Django.
from realtime.common.close_codes import POLICY_VIOLATION, PROTOCOL_UNSUPPORTED

logger = logging.getLogger("realtime.client")

SUBPROTOCOL = "realtime.v3"
PROTOCOL = 3  # the version publish and call need (the welcome's "protocol")
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
STABLE_AFTER = 10.0
# A publish answered with one of these codes may or may not be stored: it is sent again with
# its id (never a new one, which could store it twice) after RETRY_BASE doubling to RETRY_CAP.
RETRY_CODES = frozenset({"unavailable", "timeout", "rate_limited"})
RETRY_BASE, RETRY_CAP = 1.0, 30.0
# A welcome without limits (an older server): its default pace, REALTIME_WS_RATE and _BURST.
SERVER_DEFAULT_LIMITS = {"rate": 10, "burst": 20}
# Close codes after which reconnecting would be refused the same way (docs/protocol.md): 1008
# policy (TLS required, flooding), 4010 a protocol version the server no longer serves.
STOP_CODES = (POLICY_VIOLATION, PROTOCOL_UNSUPPORTED)
MESSAGE_TOO_BIG = 1009  # a message over the welcome's limits.max_message (the server floor's)
PRESENCE_TYPES = frozenset({"presence", "join", "leave", "update"})


class RealtimeError(Exception):
    """Anything this client raises on purpose."""


class ConnectError(RealtimeError):
    """The server could not be reached, its certificate did not verify (`tls` true), or it
    refused the socket (`status`: the HTTP status; `code`: a close code before the welcome)."""

    def __init__(
        self, message: str, *, tls: bool = False, status: int | None = None, code: int | None = None
    ) -> None:
        super().__init__(message)
        self.tls, self.status, self.code = tls, status, code


class Closed(RealtimeError):
    """The client stopped for good: closed by its user, or by the server with a code after
    which it does not reconnect (`code`: 1008 policy, 4010 protocol no longer served)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ProtocolUnsupported(Closed):
    """The server no longer speaks this client's protocol version: upgrade the client."""


class ServerError(RealtimeError):
    """An `error` (or a reply's error) from the server: `code` as docs/protocol.md lists them,
    `detail` its sentence, `retry_after` seconds when rate limited."""

    def __init__(self, code: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code, self.detail, self.retry_after = code, detail, retry_after


class SubscribeError(ServerError):
    """A subscribe refused (`forbidden`, `too_many_subscriptions`, `invalid_subscribe`), or a
    subscription the server ended (`code` the `unsubscribed` reason, such as `forbidden`)."""


class PublishError(ServerError):
    """A publish refused (`id`: its id): `forbidden`, `rejected`, `invalid_publish`,
    `id_reused`, `too_large`, `internal`; or decided here: `too_large` (over the welcome's
    `max_message`, not sent; or of unknown size when the server closed with 1009),
    `expired` (unanswered for longer than the server remembers ids: sent again, it could be
    stored twice), `disconnected` (in flight when the connection dropped, and ephemeral or
    sent by an anonymous socket, whose ids the server remembers on that socket only).
    `unavailable`, `timeout` and `rate_limited` are not raised: the publish is sent again."""

    def __init__(
        self,
        code: str,
        detail: str = "",
        retry_after: float | None = None,
        id: str | None = None,  # noqa: A002 (the protocol's name)
    ) -> None:
        super().__init__(code, detail, retry_after)
        self.id = id


class CallError(ServerError):
    """A call's error reply: `not_found`, `rejected`, `timeout`, `internal`, `too_many_calls`,
    `invalid_call`; or, decided here, `timeout` (no reply within the call's timeout) and
    `disconnected` (the connection dropped first: the call may or may not have run)."""


@dataclass(eq=False)
class Pending:
    """A publish not yet answered: the socket it was last written to, when it was first
    written, whether its size was checked against a known max_message, its retries."""

    message: dict[str, Any]
    answer: asyncio.Future[Any]
    socket: ClientConnection | None = None
    first_sent: float | None = None
    checked: bool = False
    retries: int = 0
    retry: asyncio.TimerHandle | None = None

    def fail(self, code: str, detail: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(PublishError(code, detail, id=self.message["id"]))


def encode(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def backoff_delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before reconnect number `attempt` (0-based): full jitter, as realtime.mjs's
    backoffDelay (0.5 s * 2^attempt, capped at 30 s)."""
    n = max(0, min(attempt, 30))
    return rand() * min(BACKOFF_CAP, BACKOFF_BASE * 2**n)


def websocket_url(url: str) -> str:
    """`url` as a WebSocket URL: https://host -> wss://host/ws/, http:// -> ws://; a ws(s) URL
    as it is."""
    parts = urlsplit(url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    if scheme not in ("wss", "ws") or not parts.netloc:
        raise ValueError(f"{url!r} is not a wss://, ws://, https:// or http:// URL")
    path = parts.path if parts.scheme in ("wss", "ws") or parts.path not in ("", "/") else "/ws/"
    return urlunsplit((scheme, parts.netloc, path or "/", parts.query, ""))


def origin_for(url: str) -> str:
    """The Origin a page of the same site sends: https://host:port for wss, http:// for ws."""
    parts = urlsplit(url)
    return ("https://" if parts.scheme == "wss" else "http://") + parts.netloc


def tls_context(ssl: ssl_module.SSLContext | str | os.PathLike | None) -> ssl_module.SSLContext:
    """A verifying client context: the system's CAs (None), a CA file, or the caller's context,
    refused if it does not verify certificates and host names."""
    if ssl is None:
        return ssl_module.create_default_context()
    if isinstance(ssl, ssl_module.SSLContext):
        if ssl.verify_mode != ssl_module.CERT_REQUIRED or not ssl.check_hostname:
            raise ValueError(
                "This client verifies certificates: pass a context with CERT_REQUIRED and "
                "check_hostname (ssl.create_default_context(cafile=...)), or a CA file."
            )
        return ssl
    return ssl_module.create_default_context(cafile=os.fspath(ssl))


def failure(exc: BaseException) -> str:
    """Why a connection failed, in words: "Connection refused" rather than asyncio's "Connect
    call failed" (or its "Multiple exceptions" for a name with an IPv4 and an IPv6 address)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    errors = {int(n) for n in re.findall(r"\[Errno (\d+)\]", str(exc))}
    if isinstance(exc, OSError) and exc.errno:
        errors = {exc.errno}
    if len(errors) == 1:
        return os.strerror(errors.pop())
    return str(exc) or type(exc).__name__


def cookie_header(cookies: Mapping[str, str]) -> str:
    """A Cookie header; ValueError for a name or value that would add a cookie or a header."""
    for name, value in cookies.items():
        if not name or any(c in name for c in "=; \r\n") or any(c in value for c in ";\r\n"):
            raise ValueError(f"Cookie {name!r} has a character a cookie may not hold")
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


class Subscription:
    """A topic's messages, in offset order and each once, through reconnects: an async
    iterator of the server's messages as dicts (`type` "message"; `resume_failed` when the
    topic's history no longer reached back to where it was, so some were missed; with
    `presence=True` also `presence`, `join`, `leave`, `update`). Iteration ends after
    close(), and raises SubscribeError when the server ends the subscription, or Closed."""

    def __init__(self, client: Realtime, topic: str, since: tuple[str, int] | None, presence: bool):
        self.client, self.topic, self.presence = client, topic, presence
        self.epoch, self.offset = since if since is not None else (None, None)
        self.subscribed = False  # the server answered `subscribed` on the current socket
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.ended = False

    def position(self) -> tuple[str, int] | None:
        """(epoch, offset) of the last message delivered (or where it started)."""
        return None if self.epoch is None else (self.epoch, self.offset)

    def request(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "topic": self.topic}
        if self.epoch is not None:
            message["since"] = {"epoch": self.epoch, "offset": self.offset}
        return message

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        item = await self.queue.get()
        if item is None:
            self.queue.put_nowait(None)  # iterating again ends again
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.queue.put_nowait(item)
            raise item
        return item

    async def close(self) -> None:
        """Unsubscribe; iteration ends once what arrived before is read."""
        await self.client.unsubscribe(self.topic)

    # --- Fed by the client's reader -----------------------------------------------------------

    def on_subscribed(self, message: dict[str, Any]) -> None:
        # With `since`, its offset is that position; after a resume_failed, the latest.
        self.epoch, self.offset = message.get("epoch"), message.get("offset")
        self.subscribed = True
        if not self.ready.done():
            self.ready.set_result(None)

    def on_message(self, message: dict[str, Any]) -> None:
        offset = message.get("offset")
        if isinstance(offset, int):
            if not self.subscribed or (self.offset is not None and offset <= self.offset):
                return  # before `subscribed` its replay has it; at or below: delivered already
            self.offset = offset
        self.queue.put_nowait(message)

    def end(self, error: BaseException | None) -> None:
        if self.ended:
            return
        self.ended = True
        if not self.ready.done():
            self.ready.set_exception(error or Closed("unsubscribed"))
            self.ready.exception()  # read: the subscriber may have stopped waiting
        self.queue.put_nowait(error)


class Realtime:
    """One logical connection to /ws/ that reconnects by itself (use `connect()`).

    `welcome`: the welcome of the current socket (or the last one); `live`: false while the
    server says its worker lost the channel layer (`status`); `connected`: a socket is open.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl: ssl_module.SSLContext | str | os.PathLike | None = None,
        origin: str | None = None,
        cookies: Mapping[str, str] | None = None,
        session: str | None = None,
        session_cookie: str = "sessionid",
        open_timeout: float = 10,
        send_rate: float | None = None,
        send_burst: int | None = None,
        on_state: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.url = websocket_url(url)
        secure = self.url.startswith("wss://")
        if not secure and ssl is not None:
            raise ValueError("A CA or SSL context was given for a ws:// URL: use wss://")
        self._tls = tls_context(ssl) if secure else None
        jar = dict(cookies or {})
        if session is not None:
            jar[session_cookie] = session
        self._headers = {"Cookie": cookie_header(jar)} if jar else {}
        self._origin = origin or origin_for(self.url)
        self._open_timeout = open_timeout
        self._on_state = on_state
        self._send_rate, self._send_burst = send_rate, send_burst
        self._rate, self._burst = 0.0, 1  # the current socket's pace (_attach)
        self._tokens, self._refilled = 0.0, time.monotonic()
        self._send_lock = asyncio.Lock()
        self.welcome: dict[str, Any] = {}
        self.live = True
        self._ws: ClientConnection | None = None
        self._subscriptions: dict[str, Subscription] = {}
        self._publishes: dict[str, Pending] = {}
        self._calls: dict[Any, asyncio.Future[Any]] = {}
        self._pongs: list[asyncio.Future[None]] = []
        self._refs = itertools.count(1)
        self._opened = asyncio.Event()
        self._stopped: Closed | None = None
        self._runner: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def connected(self) -> bool:
        return self._ws is not None

    # --- Public API -------------------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        since: tuple[str, int] | Mapping[str, Any] | str | None = None,
        *,
        presence: bool = False,
        timeout: float = 30,
    ) -> Subscription:
        """Subscribe to `topic` (from `since`, an (epoch, offset), {"epoch", "offset"} or
        "EPOCH:OFFSET": what was published after it comes first) and return its Subscription
        once the server confirmed it; SubscribeError if it refused."""
        self._check_running()
        if topic in self._subscriptions:
            raise ValueError(f"Already subscribed to {topic!r}: iterate that subscription")
        position = parse_position(since)
        if position is None and topic == "user" and self.welcome.get("user_topic"):
            # The server subscribed this socket at connect: resume from the welcome's position.
            position = parse_position(self.welcome["user_topic"])
        subscription = Subscription(self, topic, position, presence)
        self._subscriptions[topic] = subscription
        try:
            if self._ws is not None:  # else the reconnect sends it
                with contextlib.suppress(ConnectionClosed):
                    await self._send(subscription.request())
            await asyncio.wait_for(asyncio.shield(subscription.ready), timeout)
        except BaseException:
            if self._subscriptions.get(topic) is subscription:
                del self._subscriptions[topic]
            raise
        return subscription

    async def unsubscribe(self, topic: str) -> None:
        subscription = self._subscriptions.pop(topic, None)
        if subscription is None:
            return
        subscription.end(None)
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._send({"type": "unsubscribe", "topic": topic})

    async def publish(
        self,
        topic: str,
        data: Any,
        *,
        ephemeral: bool = False,
        event: str | None = None,
        id: str | None = None,
        timeout: float | None = 30,
    ) -> int | None:
        """Publish `data` to `topic`; the offset it was stored at (None when ephemeral).

        Not answered before the connection dropped, or answered `unavailable`, `timeout` or
        `rate_limited`, it is sent again with the same `id` (once reconnected; after a
        backoff), and the server answers the first offset: stored and delivered once. Past
        `timeout` seconds without an answer: TimeoutError (publish again with the same `id`
        to learn its fate). PublishError when the server refuses it, or this client does
        (`too_large`, `expired`, `disconnected`: see PublishError)."""
        self._check_running()
        self._need_protocol("publish")
        message_id = id if id is not None else uuid.uuid4().hex
        message: dict[str, Any] = {"type": "publish", "topic": topic, "data": data}
        message["id"] = message_id
        if event is not None:
            message["event"] = event
        if ephemeral:
            message["ephemeral"] = True
        if message_id in self._publishes:
            raise ValueError(f"A publish with id {message_id!r} is already in flight")
        pending = Pending(message, asyncio.get_running_loop().create_future())
        self._publishes[message_id] = pending
        try:
            await self._send_publish(pending)  # refused here, or not connected: no wait
            return await asyncio.wait_for(asyncio.shield(pending.answer), timeout)
        finally:
            self._publishes.pop(message_id, None)
            pending.answer.cancel()  # given up (TimeoutError): a retry under way sends nothing
            if pending.retry is not None:
                pending.retry.cancel()

    async def call(self, name: str, data: Any = None, timeout: float = 10) -> Any:
        """Call the server's `name` with `data`; its reply's data, or CallError."""
        self._check_running()
        self._need_protocol("call")
        ref = next(self._refs)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self._opened.wait(), timeout)
            self._check_running()
            self._calls[ref] = reply
            message = {"type": "call", "name": name, "data": data, "ref": ref}
            await self._send(message, refuse=CallError)
            return await asyncio.wait_for(asyncio.shield(reply), max(0, deadline - loop.time()))
        except TimeoutError:
            raise CallError("timeout", f"No reply within {timeout} s.") from None
        except ConnectionClosed:
            raise CallError("disconnected", "The connection dropped before the reply.") from None
        finally:
            self._calls.pop(ref, None)

    async def ping(self, timeout: float = 10) -> float:
        """Send a ping; seconds until its pong."""
        self._check_running()
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        await asyncio.wait_for(self._opened.wait(), timeout)
        self._check_running()
        self._pongs.append(pong)
        await self._send({"type": "ping"})
        await asyncio.wait_for(pong, timeout)
        return time.monotonic() - started

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send any message of the protocol (raises websockets' ConnectionClosed if the socket
        is not open): what the methods above do not cover."""
        await self._send(dict(message))

    async def close(self) -> None:
        """Stop: close the socket, end every subscription, fail what waits for an answer."""
        self._stop(Closed("The client was closed."))
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def wait_closed(self) -> Closed:
        """Wait until the client stops for good (closed, or a code it does not reconnect
        after); the reason."""
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._runner)
        assert self._stopped is not None
        return self._stopped

    # --- Connecting -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the first socket (ConnectError at once if it fails), then keep it open."""
        ws = await self._open()
        self._attach(ws)
        self._runner = asyncio.create_task(self._run(ws))

    async def _open(self) -> ClientConnection:
        """One socket, up to its welcome; ConnectError or ProtocolUnsupported if not."""
        try:
            ws = await ws_connect(
                self.url,
                ssl=self._tls,
                origin=self._origin,
                additional_headers=self._headers,
                subprotocols=[SUBPROTOCOL],
                open_timeout=self._open_timeout,
                max_size=2**22,  # a replay frame or the live view's stats, not 1 MiB
            )
        except ssl_module.SSLCertVerificationError as exc:
            raise ConnectError(
                f"The certificate of {self.url} did not verify: {exc.verify_message}. Trust "
                "its CA (a CA file, or the system's store), never turn verification off.",
                tls=True,
            ) from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            why = " (its origin check: pass origin=)" if status == 403 else ""
            raise ConnectError(
                f"{self.url} refused the WebSocket with HTTP {status}{why}.", status=status
            ) from None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise ConnectError(f"Could not connect to {self.url}: {failure(exc)}.") from None
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), self._open_timeout))
        except ConnectionClosed as exc:
            code, reason = exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else ""
            raise ConnectError(
                f"{self.url} closed the socket before its welcome: {code} {reason}".strip(),
                code=code,
            ) from None
        except (TimeoutError, ValueError) as exc:
            await ws.close()
            raise ConnectError(f"No welcome from {self.url}: {exc or 'timed out'}.") from None
        if first.get("type") == "reload":
            await ws.close()
            raise ProtocolUnsupported(
                f"The server no longer serves this client's protocol: {first.get('detail')}",
                PROTOCOL_UNSUPPORTED,
            )
        if first.get("type") != "welcome":
            await ws.close()
            raise ConnectError(f"{self.url} sent {first.get('type')!r} before its welcome.")
        self.welcome = first
        return ws

    def _attach(self, ws: ClientConnection) -> None:
        """A new socket is open: what waits for one goes on it (in the order sent), paced to
        its welcome's limits (half the server's burst at once: the other half absorbs what
        the network bunches up)."""
        limits = self._limits()
        rate = self._send_rate if self._send_rate is not None else limits.get("rate")
        burst = self._send_burst or max(1, int(limits.get("burst") or 2) // 2)
        self._rate, self._burst = float(rate or 0), burst
        self._tokens, self._refilled = float(burst), time.monotonic()
        self._ws = ws
        self.live = True
        self._opened.set()
        idle = self.welcome.get("idle_timeout") or 0
        if self._keepalive is not None:
            self._keepalive.cancel()
        if idle:
            self._keepalive = asyncio.create_task(self._keep_alive(ws, idle / 3))
        self._state("open", {"welcome": self.welcome})

    async def _resend(self) -> None:
        """After a reconnect: each subscription from its position, then each publish in flight
        (its id again; ephemeral ones were failed when the socket dropped; one waiting for
        its retry goes when that comes)."""
        for subscription in list(self._subscriptions.values()):
            await self._send(subscription.request())
        for pending in list(self._publishes.values()):
            if pending.retry is None:
                await self._send_publish(pending)

    async def _send_publish(self, pending: Pending) -> None:
        """Send a pending publish (again) if connected, unless it is larger than the server
        takes or older than the server remembers its id for: those fail instead."""
        if pending.answer.done():
            return
        text = encode(pending.message)
        if self._too_large(text):
            pending.fail("too_large", self._too_large_detail())
        elif not self._expired(pending) and self._ws is not None:
            pending.checked = isinstance(self._limits().get("max_message"), int)

            def still_wanted() -> bool:
                return not pending.answer.done() and not self._expired(pending)

            with contextlib.suppress(ConnectionClosed):
                ws = await self._write(text, still_wanted)
                if ws is not None:
                    pending.socket = ws
                    pending.first_sent = pending.first_sent or time.monotonic()

    def _expired(self, pending: Pending) -> bool:
        ttl = self._limits().get("publish_id_ttl")
        if not ttl or pending.first_sent is None or time.monotonic() - pending.first_sent < ttl:
            return False
        pending.fail("expired", f"Unanswered for {ttl} s: sent again, it could be stored twice.")
        return True

    def _limits(self) -> dict[str, Any]:
        limits = self.welcome.get("limits")
        return limits if isinstance(limits, dict) else SERVER_DEFAULT_LIMITS

    def _too_large(self, text: str) -> bool:
        limit = self._limits().get("max_message")
        return isinstance(limit, int) and limit > 0 and len(text.encode()) > limit

    def _too_large_detail(self) -> str:
        return f"Larger than the server's {self._limits()['max_message']} bytes: not sent."

    async def _run(self, ws: ClientConnection) -> None:
        try:
            await self._reconnecting(ws)
        except Exception as exc:  # a bug here must not leave callers waiting forever
            logger.exception("The connection's task failed")
            self._stop(Closed(f"The client failed: {exc!r}"))

    async def _reconnecting(self, ws: ClientConnection) -> None:
        attempt = 0
        while True:
            opened = time.monotonic()
            code, reason = await self._read(ws)
            self._lost(ws, code)
            if self._stopped is not None:
                return
            if code in STOP_CODES:
                kind = ProtocolUnsupported if code == PROTOCOL_UNSUPPORTED else Closed
                self._stop(kind(f"The server closed the socket with {code} {reason}".strip(), code))
                return
            if time.monotonic() - opened >= STABLE_AFTER:
                attempt = 0
            while True:
                delay = backoff_delay(attempt)
                attempt += 1
                self._state("closed", {"code": code, "reason": reason, "reconnect_in": delay})
                await asyncio.sleep(delay)
                try:
                    ws = await self._open()
                except ProtocolUnsupported as exc:
                    self._stop(exc)
                    return
                except ConnectError as exc:
                    code, reason = exc.code, str(exc)
                    logger.info("Reconnecting: %s", exc)
                    continue
                break
            self._attach(ws)
            with contextlib.suppress(ConnectionClosed):  # the next read sees the close
                await self._resend()

    async def _read(self, ws: ClientConnection) -> tuple[int | None, str]:
        try:
            async for text in ws:
                if isinstance(text, str):
                    try:
                        message = json.loads(text)
                    except ValueError:
                        logger.warning("Not JSON from the server: %.200s", text)
                        continue
                    if isinstance(message, dict):
                        self._handle(message)
        except ConnectionClosed:
            pass
        rcvd = ws.close_code, ws.close_reason
        return rcvd[0], rcvd[1] or ""

    def _lost(self, ws: ClientConnection, code: int | None) -> None:
        """The socket closed: nothing in flight on it will be answered there. Publishes are
        sent again on the next one, but not an ephemeral one (stale by then), one an anonymous
        socket sent (the server remembers its ids on that socket only: it could be stored
        twice), nor after 1009 one sent there whose size was not checked (it may be the one
        that was too large)."""
        anonymous = self.welcome.get("user") is None
        self._ws = None
        self._opened.clear()
        if self._keepalive is not None:
            self._keepalive.cancel()
        for subscription in self._subscriptions.values():
            subscription.subscribed = False
        for reply in list(self._calls.values()):
            if not reply.done():
                reply.set_exception(
                    CallError("disconnected", "The connection dropped before the reply.")
                )
        for pending in self._publishes.values():
            if pending.message.get("ephemeral"):
                pending.fail("disconnected", "Ephemeral: not sent again.")
            elif pending.socket is ws and anonymous:
                pending.fail("disconnected", "Sent by an anonymous socket: not sent again.")
            elif pending.socket is ws and code == MESSAGE_TOO_BIG and not pending.checked:
                pending.fail("too_large", f"The server closed the socket with {code}.")
        for pong in self._pongs:
            if not pong.done():
                pong.set_exception(ConnectionError("The connection dropped before the pong."))
        self._pongs.clear()

    def _stop(self, reason: Closed) -> None:
        if self._stopped is not None:
            return
        self._stopped = reason
        self._opened.set()  # a call waiting for a socket learns at once
        for subscription in self._subscriptions.values():
            subscription.end(reason)
        for pending in self._publishes.values():
            if not pending.answer.done():
                pending.answer.set_exception(reason)
        for reply in self._calls.values():
            if not reply.done():
                reply.set_exception(reason)
        self._state("stopped", {"code": reason.code, "reason": str(reason)})

    def _check_running(self) -> None:
        if self._stopped is not None:
            raise self._stopped

    def _need_protocol(self, what: str) -> None:
        version = self.welcome.get("protocol")
        if isinstance(version, int) and version < PROTOCOL:
            raise RealtimeError(
                f"{self.url} speaks protocol {version}: {what} needs {PROTOCOL} or later."
            )

    def _state(self, state: str, info: dict[str, Any]) -> None:
        if self._on_state is not None:
            try:
                self._on_state(state, info)
            except Exception:
                logger.exception("on_state raised")

    async def _keep_alive(self, ws: ClientConnection, every: float) -> None:
        """A ping every third of the server's idle timeout keeps a quiet socket open."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(every)
                if self._ws is not ws:
                    return
                await self._send({"type": "ping"})

    async def _send(self, message: dict[str, Any], refuse: type[ServerError] = ServerError) -> None:
        """Send `message`, paced; `refuse("too_large")` if the server would not take it."""
        text = encode(message)
        if self._too_large(text):
            raise refuse("too_large", self._too_large_detail())
        await self._write(text)

    async def _write(
        self, text: str, wanted: Callable[[], bool] | None = None
    ) -> ClientConnection | None:
        """Write `text` in order within the socket's pace (limits.rate a second after a
        burst), unless `wanted()` says no once its turn comes; the socket it went on."""
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(None, None)
        async with self._send_lock:
            if self._rate:
                now = time.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
                self._refilled = now
                if self._tokens < 1:
                    await asyncio.sleep((1 - self._tokens) / self._rate)
                    self._tokens, self._refilled = 1.0, time.monotonic()
                self._tokens -= 1
            if wanted is not None and not wanted():
                return None
            await ws.send(text)
            return ws

    # --- What the server says ---------------------------------------------------------------

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        topic = message.get("topic")
        subscription = self._subscriptions.get(topic) if isinstance(topic, str) else None
        if kind == "message" and subscription is not None:
            subscription.on_message(message)
        elif kind == "subscribed" and subscription is not None:
            subscription.on_subscribed(message)
        elif kind == "resume_failed" and subscription is not None:
            subscription.queue.put_nowait(message)
        elif kind in PRESENCE_TYPES and subscription is not None:
            if subscription.presence:
                subscription.queue.put_nowait(message)
        elif kind == "unsubscribed" and subscription is not None:
            if message.get("reason") != "requested":
                del self._subscriptions[topic]
                code = message.get("reason") or "ended"
                subscription.end(SubscribeError(code, message.get("detail", "")))
        elif kind == "published":
            self._answer_publish(message.get("id"), message.get("offset"))
        elif kind == "reply":
            self._answer_call(message)
        elif kind == "pong":
            if self._pongs:
                pong = self._pongs.pop(0)
                if not pong.done():
                    pong.set_result(None)
        elif kind == "status":
            self.live = bool(message.get("live"))
            self._state("live" if self.live else "paused", message)
        elif kind == "reload":
            self._stop(ProtocolUnsupported(str(message.get("detail")), PROTOCOL_UNSUPPORTED))
        elif kind == "error":
            self._error(message, subscription)

    def _error(self, message: dict[str, Any], subscription: Subscription | None) -> None:
        code, detail = str(message.get("code")), str(message.get("detail", ""))
        retry_after = message.get("retry_after")
        message_id = message.get("id")
        pending = self._publishes.get(message_id) if isinstance(message_id, str) else None
        if pending is not None:
            self._publish_refused(pending, code, detail, retry_after)
        elif subscription is not None and code == "rate_limited" and retry_after is not None:
            # A subscribe with `since` over the replay budget: nothing changed; ask again.
            self._later(retry_after, subscription)
        elif (
            subscription is not None
            and not subscription.subscribed
            and message.get("request", "subscribe") == "subscribe"  # not a presence_update's
        ):
            del self._subscriptions[subscription.topic]
            subscription.end(SubscribeError(code, detail, retry_after))
        else:
            logger.warning("The server answered %s: %s", code, detail)

    def _later(self, delay: float, subscription: Subscription) -> None:
        async def again() -> None:
            await asyncio.sleep(delay)
            if self._subscriptions.get(subscription.topic) is subscription and self._ws:
                with contextlib.suppress(ConnectionClosed):
                    await self._send(subscription.request())

        task = asyncio.create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish_refused(
        self, pending: Pending, code: str, detail: str, retry_after: float | None
    ) -> None:
        """`unavailable`, `timeout`, `rate_limited`: stored or not, it is sent again with its
        id after a backoff (its caller retrying with a new id could store it twice)."""
        if code not in RETRY_CODES or pending.message.get("ephemeral"):
            if not pending.answer.done():
                error = PublishError(code, detail, retry_after, id=pending.message["id"])
                pending.answer.set_exception(error)
            return
        if pending.retry is not None:
            return
        delay = max(min(RETRY_CAP, RETRY_BASE * 2**pending.retries), retry_after or 0)
        pending.retries += 1

        def again() -> None:
            pending.retry = None  # not connected: the reconnect sends it
            task = asyncio.create_task(self._send_publish(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        pending.retry = asyncio.get_running_loop().call_later(delay, again)

    def _answer_publish(self, message_id: Any, result: Any) -> None:
        pending = self._publishes.get(message_id) if isinstance(message_id, str) else None
        if pending is not None and not pending.answer.done():
            pending.answer.set_result(result)

    def _answer_call(self, message: dict[str, Any]) -> None:
        reply = self._calls.get(message.get("ref"))
        if reply is None or reply.done():
            return
        error = message.get("error")
        if isinstance(error, dict):
            reply.set_exception(CallError(str(error.get("code")), str(error.get("detail", ""))))
        else:
            reply.set_result(message.get("data"))


def parse_position(since: Any) -> tuple[str, int] | None:
    """(epoch, offset) from a tuple, {"epoch", "offset"} or "EPOCH:OFFSET"; None for None."""
    if since is None:
        return None
    if isinstance(since, str):
        epoch, _, offset = since.rpartition(":")
        if epoch and offset.isdigit():
            return epoch, int(offset)
    elif isinstance(since, Mapping):
        epoch, offset = since.get("epoch"), since.get("offset")
        if isinstance(epoch, str) and isinstance(offset, int):
            return epoch, offset
    elif isinstance(since, tuple) and len(since) == 2:
        epoch, offset = since
        if isinstance(epoch, str) and isinstance(offset, int):
            return epoch, offset
    raise ValueError(f'A position is (epoch, offset) or "EPOCH:OFFSET", not {since!r}')


@contextlib.asynccontextmanager
async def connect(url: str, **options: Any) -> AsyncIterator[Realtime]:
    """`async with connect(url, ...) as rt`: a Realtime whose first socket is open (its
    welcome in `rt.welcome`), closed at the end of the block. Options: `ssl` (None: the
    system's CAs; a CA file path; or a verifying SSLContext), `origin` (default: the URL's
    own, as a page of the site sends), `cookies` (a mapping) or `session` (a Django session
    key, sent as cookie `session_cookie`, "sessionid"), `open_timeout`, `send_rate` and
    `send_burst` (pace of outgoing messages, by default the welcome's `limits`; rate 0:
    unpaced), `on_state(state, info)`: "open",
    "closed" (with `code`, `reason`, `reconnect_in` seconds), "paused", "live", "stopped".
    ConnectError if the first socket cannot be opened."""
    client = Realtime(url, **options)
    await client.start()
    try:
        yield client
    finally:
        await client.close()
