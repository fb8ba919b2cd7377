"""The JSON message protocol spoken on /ws/ (documented in docs/protocol.md).

Pure functions: parse what a client sends, build what the server sends.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# The current version, offered by clients as the subprotocol `realtime.v3`
# (realtime.websocket.versions; docs/protocol.md, "Versions"). 1: resume by broadcast id;
# 2: positions (epoch, offset) for broadcasts and topics; 3: clients publish, call and update
# their presence metadata.
PROTOCOL_VERSION = 3

CLIENT_TYPES = frozenset(
    {
        "ping",
        "resume",
        "subscribe",
        "unsubscribe",
        "broadcast",
        "publish",
        "presence_update",
        "call",
    }
)
# Events only the server sends: a page applies an "html" message as a fragment of its DOM.
RESERVED_EVENTS = frozenset({"html"})
MAX_SIGNED = 1024  # a subscribe's signed stream name (realtime.messaging.signed_streams)
CLIENT_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")  # a publish's id, chosen by the client


class ProtocolError(Exception):
    """A client message the server cannot act on; answered with an `error` message."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_client_message(text: str) -> dict[str, Any]:
    """Decode one text frame into a message object with a known `type`, or raise ProtocolError."""
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolError("invalid_json", f"Message is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("invalid_json", "Message is nested too deeply.") from None
    if not isinstance(message, dict):
        raise ProtocolError("not_an_object", "Message must be a JSON object.")
    kind = message.get("type")
    if kind is None:
        raise ProtocolError("missing_type", 'Message has no "type" field.')
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        known = ", ".join(sorted(CLIENT_TYPES))
        raise ProtocolError("unknown_type", f"Unknown message type {kind!r}; known: {known}.")
    if kind == "resume":
        message["since"] = position(message.get("since"), "invalid_resume")
    if kind == "subscribe":
        _check_subscribe(message)
    if kind == "unsubscribe" and not isinstance(message.get("topic"), str):
        raise ProtocolError("invalid_unsubscribe", '"topic" must be a topic name.')
    if kind == "presence_update" and not isinstance(message.get("topic"), str):
        raise ProtocolError("invalid_presence_update", '"topic" must be a topic name.')
    return message


def _check_subscribe(message: dict[str, Any]) -> None:
    if "topic" in message:
        if not isinstance(message["topic"], str):
            raise ProtocolError("invalid_subscribe", '"topic" must be a topic name.')
        if message.get("since") is not None:
            message["since"] = position(message["since"], "invalid_subscribe")
        signed = message.get("signed")
        if signed is not None and not (isinstance(signed, str) and len(signed) <= MAX_SIGNED):
            raise ProtocolError(
                "invalid_subscribe",
                f'"signed" must be a signed stream name (at most {MAX_SIGNED}).',
            )
    elif not isinstance(message.get("audience"), str):
        raise ProtocolError(
            "invalid_subscribe", '"topic" must be a topic name (or "audience" an audience).'
        )


def position(since: Any, code: str) -> tuple[str, int]:
    """A client's `{"epoch": E, "offset": N}` as (E, N), or ProtocolError."""
    if isinstance(since, dict):
        epoch, offset = since.get("epoch"), since.get("offset")
        if (
            isinstance(epoch, str)
            and 0 < len(epoch) <= 64
            and isinstance(offset, int)
            and not isinstance(offset, bool)
            and 0 <= offset < 2**63
        ):
            return epoch, offset
    raise ProtocolError(
        code, '"since" must be {"epoch": "<string>", "offset": <integer >= 0>} from the server.'
    )


@dataclass(frozen=True)
class PublishRequest:
    topic: str
    data: Any
    id: str  # "" for an ephemeral publish without one
    event: str
    ephemeral: bool


def publish_request(message: dict[str, Any]) -> PublishRequest:
    """A client's `publish`, its fields checked for shape (the data is the topic's to judge),
    or ProtocolError "invalid_publish"."""
    topic, client_id = message.get("topic"), message.get("id", "")
    event, ephemeral = message.get("event", "message"), message.get("ephemeral", False)
    if not isinstance(topic, str):
        problem = '"topic" must be a topic name.'
    elif "data" not in message:
        problem = 'A publish needs "data".'
    elif not isinstance(ephemeral, bool):
        problem = '"ephemeral" must be true or false.'
    elif not (client_id == "" and ephemeral) and not (
        isinstance(client_id, str) and CLIENT_ID.fullmatch(client_id)
    ):
        problem = '"id" must be 1 to 64 letters, digits or . _ : - (unique per message).'
    elif not isinstance(event, str):
        problem = '"event" must be a string.'
    elif event in RESERVED_EVENTS:
        problem = f'"event" {event!r} is the server\'s own (a fragment of live HTML).'
    else:
        return PublishRequest(topic, message["data"], client_id, event, ephemeral)
    raise ProtocolError("invalid_publish", problem)


def published(topic: str, client_id: str, offset: int | None) -> str:
    """A publish was stored with this offset (null: ephemeral, sent and not stored)."""
    return encode({"type": "published", "topic": topic, "id": client_id, "offset": offset})


def publish_error(code: str, topic: Any, client_id: Any, detail: str) -> str:
    return encode(
        {
            "type": "error",
            "code": code,
            "topic": topic,
            "id": client_id,
            "request": "publish",
            "detail": detail,
        }
    )


def broadcast_request(message: dict[str, Any]) -> tuple[str, str, str]:
    """The message, level and audience of a client's `broadcast`, or ProtocolError.

    Checked only after the sender is known to be staff, so that others learn nothing but
    "forbidden"; the values themselves are validated by the Broadcast model.
    """
    text = message.get("message")
    level = message.get("level", "info")
    audience = message.get("audience", "everyone")
    if not all(isinstance(value, str) for value in (text, level, audience)):
        raise ProtocolError(
            "invalid_broadcast", '"message", "level" and "audience" must be strings.'
        )
    return text, level, audience


MAX_REF_LENGTH = 64
MAX_SAFE_INTEGER = 2**53 - 1  # JavaScript's: a larger ref would not come back as it was sent


def call_ref(message: dict[str, Any]) -> str | int | None:
    """A call's `ref` (a string of 1 to 64 characters or an integer), None when it has none
    that can be echoed."""
    ref = message.get("ref")
    if isinstance(ref, str) and 0 < len(ref) <= MAX_REF_LENGTH:
        return ref
    if isinstance(ref, int) and not isinstance(ref, bool) and abs(ref) <= MAX_SAFE_INTEGER:
        return ref
    return None


def call_request(message: dict[str, Any]) -> tuple[str, Any, str | int]:
    """The name, data and ref of a client's `call`, or ProtocolError("invalid_call")."""
    ref = call_ref(message)
    if ref is None:
        raise ProtocolError(
            "invalid_call", '"ref" must be a string of 1 to 64 characters or an integer.'
        )
    name = message.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        raise ProtocolError("invalid_call", '"name" must be a procedure name.')
    return name, message.get("data"), ref


def reply(ref: str | int, data_json: str) -> str:
    """A call's answer, its data already encoded (and measured) by the caller."""
    return f'{{"type":"reply","ref":{encode(ref)},"data":{data_json}}}'


def reply_error(ref: str | int | None, code: str, detail: str) -> str:
    return encode({"type": "reply", "ref": ref, "error": {"code": code, "detail": detail}})


def dropped(text: str | None, detail: str) -> str:
    """The answer to a message dropped over the socket's rate (REALTIME_WS_RATE): an error
    naming the publish or call it was, by its `id` or `ref`, so that its client can fail it
    (or send it again later) instead of waiting for an answer that never comes."""
    try:
        message = json.loads(text) if text else None
    except (ValueError, RecursionError):
        message = None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "call":
        return reply_error(call_ref(message), "rate_limited", detail)
    if kind == "publish":
        topic, client_id = message.get("topic"), message.get("id")
        return publish_error(
            "rate_limited",
            topic if isinstance(topic, str) else None,
            client_id if isinstance(client_id, str) else None,
            detail,
        )
    return error("rate_limited", detail)


def stats(topic: str, data: dict[str, Any]) -> str:
    """The admin's live view, for the staff sockets subscribed to its topic."""
    return encode({"type": "stats", "topic": topic, "data": data})


TYPE_PREFIX = '{"type":"'


def type_of(text: str) -> str:
    """The type of a message this module encoded (its first key), for the metrics."""
    if not text.startswith(TYPE_PREFIX):
        return "other"
    end = text.find('"', len(TYPE_PREFIX))
    return text[len(TYPE_PREFIX) : end] if 0 < end <= 40 else "other"


def encode(message: dict[str, Any]) -> str:
    """Serialize a server message as compact JSON."""
    return json.dumps(message, separators=(",", ":"))


def error(code: str, detail: str) -> str:
    return encode({"type": "error", "code": code, "detail": detail})


PONG = encode({"type": "pong"})  # the most frequent reply: built once


def pong() -> str:
    return PONG


def subscribed(audience: str) -> str:
    return encode({"type": "subscribed", "audience": audience})


def topic_subscribed(topic: str, epoch: str, offset: int) -> str:
    """A subscription is on: messages with offsets after `offset` follow, in order."""
    return encode({"type": "subscribed", "topic": topic, "epoch": epoch, "offset": offset})


def unsubscribed(topic: str, reason: str) -> str:
    return encode({"type": "unsubscribed", "topic": topic, "reason": reason})


def topic_error(code: str, topic: str, detail: str) -> str:
    return encode({"type": "error", "code": code, "topic": topic, "detail": detail})


def presence(topic: str, users: list[dict[str, Any]]) -> str:
    return encode({"type": "presence", "topic": topic, "users": users})


def presence_change(kind: str, topic: str, user: dict[str, Any]) -> str:
    """`join` (a user's first socket on the topic opened; with its meta), `leave` (its last
    one closed) or `update` (its meta changed; with the new one)."""
    return encode({"type": kind, "topic": topic, "user": user})


def presence_update_error(code: str, topic: str, detail: str) -> str:
    """A refused `presence_update`: `"request"` tells it from an error that ends the
    subscription (a refused subscribe), which a client must not take it for."""
    return encode(
        {
            "type": "error",
            "code": code,
            "topic": topic,
            "request": "presence_update",
            "detail": detail,
        }
    )


def broadcast_sent(broadcast_id: int) -> str:
    return encode({"type": "broadcast_sent", "id": broadcast_id})


def welcome(
    *,
    scheme: str,
    worker: str,
    user: str | None,
    tls: dict[str, str] | None,
    idle_timeout: int = 0,
    positions: dict[str, Any] | None = None,
    protocol: int = PROTOCOL_VERSION,
    limits: dict[str, Any] | None = None,
) -> str:
    """The first message on every socket: how it is connected, to which server process,
    which version of the protocol it speaks, and the limits its client should keep to."""
    return encode(
        {
            "type": "welcome",
            "protocol": protocol,
            "secure": scheme == "wss",
            "scheme": scheme,
            "worker": worker,
            "user": user,
            "tls": tls and {"version": tls["tls_version"], "cipher": tls["cipher_suite"]},
            # Seconds of silence before the server closes the socket (4000); 0: never.
            "idle_timeout": idle_timeout,
            # Where the broadcasts, and the signed-in user's own topic, stood as it opened.
            **(positions or {"broadcasts": None, "user_topic": None}),
            "limits": limits or {},
        }
    )


def reload(reason: str, detail: str) -> str:
    """The page must reload (its script speaks a protocol version no longer served); the
    server closes the socket next (4010)."""
    return encode({"type": "reload", "reason": reason, "detail": detail})


def status(*, live: bool, reason: str | None = None) -> str:
    """Whether this socket's worker hears the channel layer: live false while it does not
    (no broadcast reaches the socket; the page says "live updates paused"), true again
    when it does (what was sent meanwhile follows: the worker's catch-up)."""
    message: dict[str, Any] = {"type": "status", "live": live}
    if reason:
        message["reason"] = reason
    return encode(message)


def resumed(epoch: str, offset: int, replayed: int) -> str:
    return encode({"type": "resumed", "epoch": epoch, "offset": offset, "replayed": replayed})


RESUME_FAILURES = {
    "epoch_changed": "The server's history is not the one this position came from; reload.",
    "too_many": "More messages were missed than the server keeps; reload.",
    "too_old": "The missed messages are older than the server keeps; reload.",
}


def resume_failed(reason: str, epoch: str, offset: int, topic: str | None = None) -> str:
    """A resume that cannot be served: the client reloads that state; live messages continue
    after `offset`."""
    message: dict[str, Any] = {"type": "resume_failed"}
    if topic is not None:
        message["topic"] = topic
    message.update(reason=reason, epoch=epoch, offset=offset, detail=RESUME_FAILURES[reason])
    return encode(message)
