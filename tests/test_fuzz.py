"""Property-based tests (hypothesis) over message handling: random text, random JSON, deep
nesting, huge numbers and binary frames. No exception escapes; every bad message gets an error
reply and the socket still answers ping. Invalid UTF-8 is closed by daphne with 1007
(tests/test_security_e2e.py, tests/test_server.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from project.asgi import application
from realtime import wire
from tests.helpers import Communicator

pytestmark = pytest.mark.django_db(transaction=True)

# No example database: nothing is written into the work tree.
PURE = settings(max_examples=200, deadline=None, database=None)
CONSUMER = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
client_types = st.sampled_from(sorted(wire.CLIENT_TYPES)) | st.text(max_size=10)
# Objects with a plausible "type" and random other fields reach the per-type checks.
typed_objects = st.builds(
    lambda kind, fields: {**fields, "type": kind},
    client_types | json_values,
    st.dictionaries(
        st.sampled_from(["after", "audience", "message", "level", "id"]) | st.text(max_size=5),
        json_values,
        max_size=4,
    ),
)
deep_nesting = st.builds(
    lambda depth, open_, close: open_ * depth + close * depth,
    st.integers(1, 30_000),
    st.sampled_from(["[", '{"a":']),
    st.sampled_from(["]", "}"]),
)
huge_numbers = st.builds(
    lambda digits, field: f'{{"type": "resume", "{field}": {"9" * digits}}}',
    st.integers(1, 20_000),
    st.sampled_from(["after", "x"]),
)
texts = (
    st.text()
    | json_values.map(json.dumps)
    | typed_objects.map(json.dumps)
    | deep_nesting
    | huge_numbers
    | st.binary().map(lambda b: b.decode("utf-8", "surrogateescape"))
)


@PURE
@given(texts)
def test_parsing_gives_a_message_or_a_protocol_error(text):
    try:
        message = wire.parse_client_message(text)
    except wire.ProtocolError as exc:
        assert exc.code and exc.detail
        json.loads(wire.error(exc.code, exc.detail))  # the reply itself is valid JSON
    else:
        assert isinstance(message, dict) and message["type"] in wire.CLIENT_TYPES


@PURE
@given(typed_objects)
def test_a_broadcast_request_gives_strings_or_a_protocol_error(message):
    try:
        fields = wire.broadcast_request(message)
    except wire.ProtocolError as exc:
        assert exc.code == "invalid_broadcast"
    else:
        assert all(isinstance(value, str) for value in fields)


@pytest.fixture(autouse=True)
def _empty_channel_layer():
    yield
    async_to_sync(get_channel_layer().flush)()


REPLIES = {"error", "pong", "subscribed", "resumed", "resume_failed"}


async def exchange(frame: dict) -> tuple[dict, dict]:
    """Open a socket, send one frame, then a ping: (the first reply, the ping's answer).
    A fresh socket each time, so the rate limit (tests/test_limits.py) stays out of it."""

    async def over_tls(scope, receive, send):
        return await application({**scope, "scheme": "wss"}, receive, send)

    headers = [(b"origin", b"https://localhost"), (b"host", b"localhost")]
    communicator = Communicator(over_tls, "/ws/", headers=headers)
    try:
        assert (await communicator.connect())[0]
        await communicator.receive_json_from()  # welcome
        await communicator.send_input({"type": "websocket.receive", **frame})
        reply = await communicator.receive_json_from(timeout=5)
        await communicator.send_to(text_data='{"type": "ping"}')
        answer = await communicator.receive_json_from(timeout=5)
        while answer != {"type": "pong"}:  # a resume's replies may come first
            answer = await communicator.receive_json_from(timeout=5)
        return reply, answer
    finally:
        await communicator.disconnect()


@CONSUMER
@given(texts.map(lambda text: {"text": text}) | st.binary(max_size=100).map(lambda b: {"bytes": b}))
def test_the_consumer_answers_anything_and_keeps_answering_ping(frame):
    reply, answer = asyncio.run(exchange(frame))
    assert reply["type"] in REPLIES
    if reply["type"] == "error":
        assert reply["code"] and reply["detail"]
    assert answer == {"type": "pong"}
