"""Test clients that behave like the page's client: reconnect with backoff and resume from the
broadcast stream's position (epoch and offset)."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.helpers import origin_for, slot
from tests.helpers import wait_until_async as until


@dataclass
class ResumingClient:
    """Keeps a WSS connection up and resumes by position; counts every broadcast frame that
    arrives twice on the wire (`duplicates`: the server sends each once, so 0)."""

    url: str
    tls: ssl.SSLContext | None
    headers: dict[str, str] = field(default_factory=dict)
    seen: list[int] = field(default_factory=list)
    duplicates: int = 0
    doubled: list[tuple[str, int, str]] = field(default_factory=list)  # (kind, id, worker)
    connections: int = 0
    close_codes: list[int | None] = field(default_factory=list)
    resume_failures: list[dict] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)  # slots (w1), one per connection
    welcomed_by: list[str] = field(default_factory=list)  # full names (<hostname>-w1)
    position: dict | None = None  # {"epoch": ..., "offset": ...} of the broadcast stream
    # A topic it subscribes to on every connection, resuming from its position there.
    topic: str | None = None
    topic_position: dict | None = None
    topic_offsets: list[int] = field(default_factory=list)  # each message's offset, as received
    refused: list[dict] = field(default_factory=list)
    socket: ClientConnection | None = None
    stopping: bool = False
    _seen_set: set[int] = field(default_factory=set)

    async def run(self) -> None:
        delay = 0.05
        while not self.stopping:
            try:
                await self._one_connection()
                delay = 0.05
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed):
                pass
            if not self.stopping:
                await asyncio.sleep(random.uniform(0, delay))  # full jitter, as the page
                delay = min(delay * 2, 1.0)

    async def _one_connection(self) -> None:
        url = self.url
        if self.position is not None:  # resumed in the URL: no live message comes first
            url += f"?broadcasts={self.position['epoch']}:{self.position['offset']}"
        async with connect(
            url,
            ssl=self.tls,
            origin=origin_for(self.url),
            additional_headers=self.headers,
            open_timeout=10,
        ) as socket_:
            self.socket = socket_
            self.connections += 1
            try:
                async for text in socket_:
                    await self._handle(socket_, json.loads(text))
            finally:
                self.close_codes.append(socket_.close_code)
                self.socket = None

    async def _handle(self, socket_: ClientConnection, message: dict) -> None:
        kind = message["type"]
        if kind == "welcome":
            self.workers.append(slot(message["worker"]))
            self.welcomed_by.append(message["worker"])
            if self.position is None:
                self.position = dict(message["broadcasts"])
            if self.topic is not None:
                subscribe = {"type": "subscribe", "topic": self.topic}
                if self.topic_position is not None:
                    subscribe["since"] = self.topic_position
                await socket_.send(json.dumps(subscribe))
        elif kind == "subscribed" and "topic" in message:
            if self.topic_position is None or message["epoch"] != self.topic_position["epoch"]:
                self.topic_position = {"epoch": message["epoch"], "offset": message["offset"]}
        elif kind == "message":
            self._record_topic(message)
        elif kind == "error":
            self.refused.append(message)
        elif kind == "broadcast":
            self._record(message["id"])
            self.position["offset"] = max(self.position["offset"], message["offset"])
        elif kind == "resumed":
            offset = max(message["offset"], self.position["offset"])
            self.position = {"epoch": message["epoch"], "offset": offset}
        elif kind == "resume_failed":
            self.resume_failures.append(message)
            if "topic" not in message:
                self.position = {"epoch": message["epoch"], "offset": message["offset"]}

    def _record_topic(self, message: dict) -> None:
        if message["offset"] in self.topic_offsets:
            self._doubled("message", message["offset"])
            return
        self.topic_offsets.append(message["offset"])
        self.topic_position["offset"] = max(self.topic_position["offset"], message["offset"])

    def _record(self, broadcast_id: int) -> None:
        if broadcast_id in self._seen_set:
            self._doubled("broadcast", broadcast_id)
            return
        self._seen_set.add(broadcast_id)
        self.seen.append(broadcast_id)

    def _doubled(self, kind: str, number: int) -> None:
        self.duplicates += 1
        self.doubled.append((kind, number, self.workers[-1] if self.workers else "?"))

    async def drop(self) -> None:
        """Disconnect now, as a flaky network would; run() reconnects."""
        if self.socket is not None:
            await self.socket.close()

    async def stop(self) -> None:
        self.stopping = True
        await self.drop()

    def shown(self) -> list[int]:
        """What the page would show: each id once, ordered by id."""
        return sorted(self.seen)


async def start_clients(url: str, tls, count: int) -> tuple[list[ResumingClient], list]:
    clients = [ResumingClient(url, tls) for _ in range(count)]
    tasks = [asyncio.create_task(client.run()) for client in clients]
    # Welcomed: the server registered the socket before it sent the welcome and its position.
    await until(lambda: all(c.position for c in clients), 20, "every client welcomed")
    return clients, tasks


async def stop_clients(clients: list[ResumingClient], tasks: list) -> None:
    """Stop every client at once: a close handshake the server is slow to answer waits the
    client library's close timeout (10 s), once for all rather than once per client."""
    await asyncio.gather(*(client.stop() for client in clients))
    await asyncio.gather(*tasks, return_exceptions=True)


async def until_everyone_saw(clients: list[ResumingClient], expected: list[int], timeout: float):
    try:
        await until(
            lambda: all(set(expected) <= set(c.seen) for c in clients),
            timeout,
            f"every client to see broadcasts {expected}",
        )
    except AssertionError as error:
        states = [(c.seen[-len(expected) :], c.connections, c.close_codes) for c in clients]
        raise AssertionError(
            f"{error}; clients (seen, connections, close codes): {states}"
        ) from None


def report(name: str, clients: list[ResumingClient], expected: list[int]) -> None:
    lost = sum(len(set(expected) - set(c.seen)) for c in clients)
    print(
        f"\n{name}: {len(clients)} clients, {len(expected)} broadcasts, lost {lost}, "
        f"duplicates on the wire {sum(c.duplicates for c in clients)}, "
        f"reconnections {sum(c.connections - 1 for c in clients)}"
    )
