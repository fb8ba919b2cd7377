"""Sends the benchmark's broadcasts, each peer its own way, on orders from bench/run.py.

    python -m bench.trigger project            # Django set up from the environment (the servers')
    python -m bench.trigger tutorial           # the same, with bench.peers.tutorial_settings
    python -m bench.trigger node --port P [--ca CA.pem]

Reads `SEQ COUNT` lines on stdin and sends COUNT broadcasts, SEQ, SEQ+1, ..., back to back;
answers each line with one JSON line (`{"seqs": [...], "call_ms": [...]}`). Each broadcast's
text carries `bench seq=N sent=T`, T being time.time_ns() / 1e6 taken just before the send
call, which the Node receivers subtract from their own arrival time (same machine clock).

- project: `realtime.broadcast.send(text)`, the project's real path (store, then publish after
  commit: one group_send on the Redis pub/sub layer).
- project-topic: `realtime.topics.send(TOPIC, text)`, the same path for a topic's message
  (its sockets subscribed to TOPIC).
- project-document: `realtime.topics.send(TOPIC, document)`, the document a JSON object of
  about 1 KiB (a page of order records: the same field names in every record, varied values,
  the marker in its "bench" field), for the compression stage: it compresses as real data
  would, unlike a run of one character.
- project-user: `realtime.topics.send_to_user(USER, text)` to a user with no socket open:
  what a worker does for a message that none of its sockets takes (it should not depend on how
  many sockets it holds).
- tutorial: one `group_send("chat", {"type": "chat.message", "message": text})` on the core
  RedisChannelLayer, from one event loop that lives as long as this process (as a consumer's
  would).
- node: `POST /broadcast` with the text, on one kept-alive HTTPS (or HTTP) connection.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import ssl
import sys
import time
from collections.abc import Callable

TEXT_LENGTH = 100  # characters of broadcast text, the same for every peer
KEEP_ALIVE = 4.0  # seconds: below Node's default keepAliveTimeout (5 s)


def bench_marker(seq: int) -> str:
    return f"bench seq={seq} sent={time.time_ns() / 1e6:.3f}"


def bench_text(seq: int) -> str:
    return f"{bench_marker(seq)} ".ljust(TEXT_LENGTH, "x")


ORDERS = 5  # records per document: about 1 KiB of JSON
STATUSES = ["pending", "paid", "packed", "shipped", "delivered", "cancelled"]
CITIES = ["Lyon", "Porto", "Leipzig", "Utrecht", "Bologna", "Gdansk", "Valencia", "Tampere"]
CARRIERS = ["DHL", "UPS", "GLS", "DPD", "PostNL"]


def order_record(rng: random.Random) -> dict[str, object]:
    return {
        "id": rng.randrange(100_000, 1_000_000),
        "customer": {"id": rng.randrange(1, 50_000), "city": rng.choice(CITIES)},
        "status": rng.choice(STATUSES),
        "items": rng.randint(1, 12),
        "total": f"{rng.uniform(4, 900):.2f}",
        "currency": rng.choice(["EUR", "EUR", "GBP", "PLN"]),
        "carrier": rng.choice(CARRIERS),
        "tracking": f"{rng.getrandbits(48):012X}",
        "updated_at": f"2026-11-30T{rng.randrange(24):02}:{rng.randrange(60):02}:"
        f"{rng.randrange(60):02}Z",
    }


def order_document(seq: int) -> dict[str, object]:
    """A page of order updates, different for every seq (the same for a seq in every run)."""
    rng = random.Random(seq)
    return {"bench": bench_marker(seq), "orders": [order_record(rng) for _ in range(ORDERS)]}


def project_sender() -> Callable[[int], None]:
    import django

    django.setup()
    from realtime import broadcast

    def send(seq: int) -> None:
        broadcast.send(bench_text(seq))

    return send


TOPIC = "news.bench"  # a public topic of the example project (project/demo/topics.py)


def project_topic_sender() -> Callable[[int], None]:
    import django

    django.setup()
    from realtime import topics

    def send(seq: int) -> None:
        topics.send(TOPIC, bench_text(seq))

    return send


def project_document_sender() -> Callable[[int], None]:
    import django

    django.setup()
    from realtime import topics

    def send(seq: int) -> None:
        topics.send(TOPIC, order_document(seq))

    return send


USER = 2**31 - 1  # a user primary key no socket of the run belongs to


def project_user_sender() -> Callable[[int], None]:
    import django

    django.setup()
    from realtime import topics

    def send(seq: int) -> None:
        topics.send_to_user(USER, bench_text(seq))

    return send


def tutorial_sender() -> Callable[[int], None]:
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.peers.tutorial_settings"
    import django

    django.setup()
    from channels.layers import get_channel_layer

    from bench.peers.tutorial_asgi import GROUP

    layer = get_channel_layer()
    loop = asyncio.new_event_loop()

    def send(seq: int) -> None:
        event = {"type": "chat.message", "message": bench_text(seq)}
        loop.run_until_complete(layer.group_send(GROUP, event))

    return send


def node_sender(port: int, ca: str | None) -> Callable[[int], None]:
    if ca:
        context = ssl.create_default_context(cafile=ca)
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, context=context, timeout=30
        )
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    last_used = [0.0]

    def send(seq: int) -> None:
        # Node's http server closes a kept-alive connection after 5 s idle: connect again
        # first, so that no broadcast's time includes a new TLS handshake.
        if time.monotonic() - last_used[0] > KEEP_ALIVE:
            connection.close()
            connection.connect()
        connection.request("POST", "/broadcast", body=bench_text(seq).encode())
        response = connection.getresponse()
        response.read()
        last_used[0] = time.monotonic()
        if response.status != 200:
            raise RuntimeError(f"POST /broadcast answered {response.status}")

    return send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kinds = ["project", "project-topic", "project-document", "project-user", "tutorial", "node"]
    parser.add_argument("kind", choices=kinds)
    parser.add_argument("--port", type=int)
    parser.add_argument("--ca")
    args = parser.parse_args()
    if args.kind == "project":
        send = project_sender()
    elif args.kind == "project-topic":
        send = project_topic_sender()
    elif args.kind == "project-document":
        send = project_document_sender()
    elif args.kind == "project-user":
        send = project_user_sender()
    elif args.kind == "tutorial":
        send = tutorial_sender()
    else:
        send = node_sender(args.port, args.ca)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        first, count = (int(part) for part in line.split())
        seqs, call_ms = list(range(first, first + count)), []
        for seq in seqs:
            began = time.perf_counter()
            send(seq)
            call_ms.append(round((time.perf_counter() - began) * 1000, 3))
        print(json.dumps({"seqs": seqs, "call_ms": call_ms}), flush=True)


if __name__ == "__main__":
    main()
