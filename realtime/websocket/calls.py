"""A socket's calls (`call` -> `reply`): the procedures of realtime.rpc, run with a deadline,
a cap per socket and threads of their own (docs/rpc.md).

- Each call is checked against its procedure's `authorize` with the socket's user as the
  database has it now (realtime.messaging.rechecks.current_user): a right revoked since the
  socket opened, or a user deactivated since, gets `not_found`, as an unknown name does. The
  check runs on the database thread every subscribe shares, sync procedure or async, before
  the call waits for anything: a refused call never queues behind hung handlers.
- A sync handler runs in one of REALTIME_RPC_THREADS threads of this worker, never on the
  thread Channels gives every `database_sync_to_async` call: one handler that never returns
  would freeze every subscribe, sign-out check and replay of the worker. An async one runs on
  the event loop and is cancelled at its deadline, or when its socket closes.
- At most REALTIME_RPC_MAX_IN_FLIGHT calls per socket; the next is answered `too_many_calls`,
  not queued. A call counts until its handler really ends, not when its `timeout` was
  answered: a thread cannot be stopped.
- At most a share of the handler threads (half, at least one) per principal: the socket's
  user, else its client address. Counted over all its sockets on this worker, until each
  handler really ends (in the handler's thread, not when the socket closes): sync calls beyond
  it are answered `too_many_calls`, not queued, so one user or address with handlers that
  never return holds at most half the threads, and reconnecting gives it no fresh share.
- The reply is sent by the loop; a handler's exception or unfit result is logged here, with
  its traceback, and answered `internal`, nothing of it on the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from channels.db import database_sync_to_async

from realtime import rpc, wire
from realtime.common.addresses import scope_client_key
from realtime.conf import conf
from realtime.messaging.rechecks import current_user
from realtime.ops import metrics
from realtime.server.prometheus import child

logger = logging.getLogger("realtime.websocket.calls")

Answer = tuple[str, str]  # (the outcome for the metrics, the reply's text)

NOT_FOUND = "No such procedure, or this socket may not call it."
INTERNAL = "The server could not answer this call; it logged why."


class HandlerThreads(Executor):
    """A fixed number of daemon threads that run sync handlers, started at the first call.

    Not a ThreadPoolExecutor: Python joins its threads at exit, so a handler that never
    returns would keep a worker from stopping (SIGTERM, a rolling restart) until the
    supervisor's SIGKILL."""

    def __init__(self, size: int, name: str = "realtime-rpc") -> None:
        self.size, self.name = size, name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, fn, args, kwargs))
        with self._lock:
            while len(self._threads) < self.size:
                name = f"{self.name}-{len(self._threads) + 1}"
                thread = threading.Thread(target=self._work, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """End each thread once it is idle (tests; a worker process just exits)."""
        with self._lock:
            for _ in self._threads:
                self._queue.put(None)
            self._threads = []

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued: its socket closed
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                future.set_exception(exc)


_threads: HandlerThreads | None = None
_threads_lock = threading.Lock()


def handler_threads() -> HandlerThreads:
    """This process's handler threads (REALTIME_RPC_THREADS, read at the first call)."""
    global _threads
    with _threads_lock:
        if _threads is None:
            _threads = HandlerThreads(conf.REALTIME_RPC_THREADS)
        return _threads


def share(threads: HandlerThreads) -> int:
    """Sync calls one principal may have running or queued on a worker: half its threads, so
    the other half still serves everyone else while one user's handlers hang."""
    return max(1, threads.size // 2)


def principal(consumer: Any, user: Any) -> str:
    """Whose share a call spends: its user's (as the database has them now), else its client
    address's. Every socket without an address (a Unix socket) shares one: anonymous calls
    through a local proxy then hold at most one share between them, never more."""
    if user.is_authenticated:
        return f"user:{user.pk}"
    return f"address:{scope_client_key(consumer.scope)}"


class Shares:
    """How many sync calls each principal has running or queued on this worker's handler
    threads. Taken on the event loop, given back in the handler's thread (or on the loop for
    a call abandoned before it began), hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    def take(self, key: str, limit: int) -> bool:
        with self._lock:
            held = self._held.get(key, 0)
            if held >= limit:
                return False
            self._held[key] = held + 1
            return True

    def give_back(self, key: str) -> None:
        with self._lock:
            held = self._held.get(key, 0) - 1
            if held > 0:
                self._held[key] = held
            else:
                self._held.pop(key, None)

    def held(self, key: str) -> int:
        with self._lock:
            return self._held.get(key, 0)

    def __len__(self) -> int:
        """The principals holding part of their share now."""
        with self._lock:
            return len(self._held)


shares = Shares()


class Start:
    """Whether a queued sync call may still begin (not once its deadline passed first, or its
    socket closed), and its principal's share given back exactly once: when its handler
    ends, or when it is abandoned before it began."""

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._state = "queued"
        self._give_back = give_back

    def begin(self) -> bool:
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "running"
            return True

    def end(self) -> None:
        """The handler ended (in its thread)."""
        with self._lock:
            self._state = "ended"
        self._give_back()

    def abandon(self) -> bool:
        """True when the call had not begun (it never will now; its share is given back)."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "abandoned"
        self._give_back()
        return True


def error(ref: str | int | None, code: str, detail: str) -> Answer:
    return code, wire.reply_error(ref, code, detail)


def may_call(procedure: rpc.Procedure, user: Any) -> bool:
    try:
        return bool(procedure.authorize(user))
    except Exception:  # noqa: BLE001 - an app's check that fails allows nothing
        logger.exception("authorize() of procedure %s failed; answering not_found", procedure.name)
        return False


def user_and_right(consumer: Any, procedure: rpc.Procedure) -> tuple[Any, bool]:
    """The socket's user as stored now, and whether it may call `procedure` (in a thread)."""
    user = current_user(consumer)
    return user, may_call(procedure, user)


def encoded(ref: str | int, name: str, result: Any) -> Answer:
    """The reply carrying `result`, or `internal` (logged) when it is not JSON or too large."""
    try:
        text = json.dumps(result, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        size = len(text.encode())
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError: a lone surrogate
        logger.exception("Procedure %s returned data that is not JSON; answering internal", name)
        return error(ref, "internal", INTERNAL)
    if size > conf.REALTIME_TOPIC_MAX_DATA:
        logger.error(
            "Procedure %s returned %d bytes of JSON, more than REALTIME_TOPIC_MAX_DATA (%d); "
            "answering internal",
            name,
            size,
            conf.REALTIME_TOPIC_MAX_DATA,
        )
        return error(ref, "internal", INTERNAL)
    return "ok", wire.reply(ref, text)


def failed(ref: str | int, name: str, exc: Exception) -> Answer:
    if isinstance(exc, rpc.Rejected):
        return error(ref, "rejected", exc.reason)
    logger.error("Procedure %s raised; answering internal", name, exc_info=exc)
    return error(ref, "internal", INTERNAL)


def run_sync(procedure: rpc.Procedure, user: Any, data: Any, ref: Any, start: Start) -> Any:
    """A sync call's handler, in a handler thread; None when it was abandoned before it
    began. Its share is given back when it ends, however it ends."""
    if not start.begin():
        return None
    running = child(metrics.RPC_RUNNING, "sync")
    running.inc()
    try:
        try:
            result = procedure.function(user, data)
        except Exception as exc:  # noqa: BLE001 - answered, and logged by failed()
            return failed(ref, procedure.name, exc)
        return encoded(ref, procedure.name, result)
    finally:
        running.dec()
        start.end()


async def run_async(procedure: rpc.Procedure, user: Any, data: Any, ref: Any) -> Answer:
    running = child(metrics.RPC_RUNNING, "async")
    running.inc()
    try:
        result = await procedure.function(user, data)
    except Exception as exc:  # noqa: BLE001 - answered, and logged by failed()
        return failed(ref, procedure.name, exc)
    finally:
        running.dec()
    return encoded(ref, procedure.name, result)


class Calls:
    """One socket's calls in flight."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.in_flight = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    async def receive(self, message: dict[str, Any]) -> None:
        """Answer a malformed, unknown or refused call at once; start any other and return
        (the socket's next message is not held up by it)."""
        try:
            name, data, ref = wire.call_request(message)
        except wire.ProtocolError as exc:
            await self._answer(error(wire.call_ref(message), exc.code, exc.detail))
            return
        limit = conf.REALTIME_RPC_MAX_IN_FLIGHT
        if self.in_flight >= limit:
            detail = f"At most {limit} calls may be in flight on one socket; this one did not run."
            await self._answer(error(ref, "too_many_calls", detail))
            return
        procedure = rpc.lookup(name)
        if procedure is None:
            await self._answer(error(ref, "not_found", NOT_FOUND))
            return
        self.in_flight += 1
        self._spawn(self._call(procedure, data, ref))

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _call(self, procedure: rpc.Procedure, data: Any, ref: str | int) -> None:
        released = False

        def release(_: Any = None) -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        queued: list[Start] = []  # the sync call's Start, once it has its share
        work = self._spawn(self._work(procedure, data, ref, queued))
        work.add_done_callback(release)
        timeout = conf.REALTIME_RPC_TIMEOUT
        try:
            done, _ = await asyncio.wait({work}, timeout=timeout)
            if done:
                answer = self._result(work, procedure, ref)
            else:
                if procedure.is_async:
                    work.cancel()
                elif not queued or queued[0].abandon():  # not begun: it will not run now
                    work.cancel()
                    release()
                answer = error(ref, "timeout", f"No reply within {timeout} s.")
        finally:
            if queued:  # the socket closed first: a call still queued gives its share back
                queued[0].abandon()
        await self._answer(answer)

    async def _work(
        self, procedure: rpc.Procedure, data: Any, ref: str | int, queued: list[Start]
    ) -> Answer:
        # The right is read on the database thread, as a subscribe's: short, and still served
        # while every handler thread is held by handlers that do not return.
        user, allowed = await database_sync_to_async(user_and_right)(self.consumer, procedure)
        if not allowed:
            return error(ref, "not_found", NOT_FOUND)
        if procedure.is_async:
            return await run_async(procedure, user, data, ref)
        threads = handler_threads()
        key, limit = principal(self.consumer, user), share(threads)
        if not shares.take(key, limit):
            detail = (
                f"At most {limit} calls of one user (or address) may run or wait for a thread "
                "at once on this server process; this one did not run."
            )
            return error(ref, "too_many_calls", detail)
        start = Start(lambda: shares.give_back(key))
        queued.append(start)
        in_thread = database_sync_to_async(run_sync, thread_sensitive=False, executor=threads)
        return await in_thread(procedure, user, data, ref, start)

    def _result(self, work: asyncio.Task[Any], procedure: rpc.Procedure, ref: Any) -> Answer:
        exc = None if work.cancelled() else work.exception()
        if work.cancelled() or exc is not None:  # the machinery failed (the database, say)
            logger.error("A call of %s failed; answering internal", procedure.name, exc_info=exc)
            return error(ref, "internal", INTERNAL)
        return work.result()

    async def _answer(self, answer: Answer) -> None:
        outcome, text = answer
        child(metrics.RPC_CALLS, outcome).inc()
        await self.consumer.send(text_data=text)

    def close(self) -> None:
        """The socket closed: cancel its async handlers and its sync ones not begun (a sync
        handler already running ends in its own time; its reply goes nowhere)."""
        for task in list(self.tasks):
            task.cancel()


def of(consumer: Any) -> Calls:
    """The calls of a socket's consumer, made at its first call."""
    calls = consumer.__dict__.get("_calls")
    if calls is None:
        calls = consumer._calls = Calls(consumer)
    return calls


def close(consumer: Any) -> None:
    calls = consumer.__dict__.get("_calls")
    if calls is not None:
        calls.close()
