"""The JSON message protocol spoken on /ws/ (documented in docs/protocol.md).

Pure functions: parse what a client sends, build what the server sends.
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1

# The close codes this project sends (docs/protocol.md).
GOING_AWAY = 1001  # the worker is stopping (SIGTERM, a rolling restart)
POLICY_VIOLATION = 1008  # TLS required, or the client kept flooding
TRY_AGAIN_LATER = 1013  # too many sockets from one address, or the channel layer is down
IDLE_TIMEOUT = 4000  # application range: the client may reconnect at once (not "going away")
SIGNED_OUT = 4001  # the session signed out: reconnect, now anonymous
CLIENT_TYPES = frozenset({"ping", "resume", "subscribe", "broadcast"})


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
        after = message.get("after")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ProtocolError(
                "invalid_resume", '"after" must be the last broadcast id seen (>= 0).'
            )
    if kind == "subscribe" and not isinstance(message.get("audience"), str):
        raise ProtocolError("invalid_subscribe", '"audience" must be an audience name.')
    return message


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


def broadcast_sent(broadcast_id: int) -> str:
    return encode({"type": "broadcast_sent", "id": broadcast_id})


def welcome(
    *,
    scheme: str,
    worker: str,
    user: str | None,
    tls: dict[str, str] | None,
    idle_timeout: int = 0,
) -> str:
    """The first message on every socket: how it is connected, and to which server process."""
    return encode(
        {
            "type": "welcome",
            "protocol": PROTOCOL_VERSION,
            "secure": scheme == "wss",
            "scheme": scheme,
            "worker": worker,
            "user": user,
            "tls": tls and {"version": tls["tls_version"], "cipher": tls["cipher_suite"]},
            # Seconds of silence before the server closes the socket (4000); 0: never.
            "idle_timeout": idle_timeout,
        }
    )


def status(*, live: bool, reason: str | None = None) -> str:
    """Whether this socket's worker hears the channel layer: live false while it does not
    (no broadcast reaches the socket; the page says "live updates paused"), true again
    when it does (what was sent meanwhile follows: the worker's catch-up)."""
    message: dict[str, Any] = {"type": "status", "live": live}
    if reason:
        message["reason"] = reason
    return encode(message)


def resumed(after: int, replayed: int, latest: int) -> str:
    return encode({"type": "resumed", "after": after, "replayed": replayed, "latest": latest})


def resume_failed(after: int, reason: str, latest: int) -> str:
    details = {
        "too_many": "More broadcasts were missed than the server replays; reload the page.",
        "too_old": "Missed broadcasts are older than the server replays; reload the page.",
        "unknown_id": "That id is not known here (the server's history changed); reload.",
    }
    return encode(
        {
            "type": "resume_failed",
            "after": after,
            "reason": reason,
            "latest": latest,
            "detail": details[reason],
        }
    )
