"""The OpenAPI 3.1 document of the HTTP publish API (realtime/api/publish.py), served at
/api/openapi.json; the suite runs schemathesis against it on a real server (tests/test_api.py).

Asked with a valid token, the topic name's schema lists the registered topic patterns; asked
without, only which characters a name has: the sockets refuse an unknown topic like a
forbidden one so that nobody learns which topics exist, and neither does this document. The
server's own topics (realtime.*) are left out: no token may send to them.

A wrong token counts against its address as a failed publish does (realtime/api/publish.py,
the same counter). Past REALTIME_API_RATE_LIMIT failures an address gets 429 for any token
until the window ends, a valid one too: which document comes back must not tell a guessed
token from a wrong one, and a held-back address costs no database lookup.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from django.http import HttpRequest, JsonResponse

from realtime.api import publish, tokens
from realtime.messaging import topic_rules
from realtime.messaging.topic_rules import MAX_EVENT_LENGTH
from realtime.models import MAX_MESSAGE_LENGTH, ApiToken, Broadcast

NO_NUL = "^[^\\u0000]*$"  # PostgreSQL cannot store NUL characters


def error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


BROADCAST = {
    "type": "object",
    "description": "A broadcast to every connected client of an audience.",
    "required": ["message"],
    "additionalProperties": False,
    "properties": {
        "message": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_MESSAGE_LENGTH,
            "pattern": NO_NUL,
        },
        "level": {"type": "string", "enum": list(Broadcast.Level.values), "default": "info"},
        "audience": {
            "type": "string",
            "enum": list(Broadcast.Audience.values),
            "default": "everyone",
        },
    },
}

TOPIC_MESSAGE = {
    "type": "object",
    "description": (
        "A message to every subscriber of a registered topic (docs/topics.md). `data` is any "
        "JSON up to REALTIME_TOPIC_MAX_DATA bytes (64 KiB), without NUL characters."
    ),
    "required": ["topic", "data"],
    "additionalProperties": False,
    "properties": {
        "topic": {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{1,200}$"},  # and registered
        "event": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_EVENT_LENGTH,
            "pattern": NO_NUL,
            "default": "message",
        },
        "data": {},
    },
}

RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}},
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"description": "The scheme to use.", "schema": {"type": "string"}},
}


def registered_topics() -> str:
    """One regular expression for every registered topic pattern, from Django's own
    (named groups made plain: JSON Schema patterns are ECMAScript's)."""
    parts = []
    for registration in topic_rules.registrations.values():
        if tokens.is_internal(registration.pattern):
            continue
        regex = registration.route.pattern.regex.pattern
        regex = regex.removeprefix("^").removesuffix("\\Z")
        parts.append(re.sub(r"\(\?P<\w+>", "(", regex))
    return "^(" + "|".join(parts) + ")$" if parts else "^$"


def topic_message(with_patterns: bool) -> dict[str, Any]:
    schema = copy.deepcopy(TOPIC_MESSAGE)
    if with_patterns:
        name = schema["properties"]["topic"]
        schema["properties"]["topic"] = {"allOf": [name, {"pattern": registered_topics()}]}
    return schema


def document(with_patterns: bool = False) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "realtime publish API",
            "version": "1",
            "description": "Send broadcasts and topic messages from other services.",
        },
        "paths": {"/api/publish": {"post": publish_operation()}},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Broadcast": BROADCAST,
                "TopicMessage": topic_message(with_patterns),
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                },
            },
        },
        "security": [{"bearer": []}],
    }


def publish_operation() -> dict[str, Any]:
    body_schema = {
        "oneOf": [
            {"$ref": "#/components/schemas/Broadcast"},
            {"$ref": "#/components/schemas/TopicMessage"},
        ]
    }
    accepted = {
        "type": "object",
        "required": ["id", "kind"],
        "properties": {
            "id": {"type": "integer"},
            "kind": {"type": "string", "enum": ["broadcast", "topic"]},
        },
    }
    return {
        "operationId": "publish",
        "summary": "Send a broadcast or a topic message",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        },
        "responses": {
            "202": {
                "description": "Stored; published to every worker after the commit.",
                "content": {"application/json": {"schema": accepted}},
            },
            "400": error("Not JSON, unknown fields, or a message the server refuses."),
            "401": error("No valid, unrevoked token.", WWW_AUTHENTICATE),
            "403": error(
                "The token's scopes do not allow it, its creator no longer holds the right, "
                "or the topic is one of the server's own (realtime.*)."
            ),
            "405": error("Only POST."),
            "413": error("The body is too large."),
            "415": error("The body is not application/json."),
            "429": error("Too many requests for this token or address.", RETRY_AFTER),
        },
    }


def token_of(request: HttpRequest) -> ApiToken | None:
    """The request's valid token, else None; Refused (429) from an address past its failures."""
    header = request.headers.get("Authorization")
    if header is None:
        return None  # no token checked, nothing to count
    failures = publish.failures_key(request)
    if publish.at_limit(failures):
        raise publish.too_many()
    token = tokens.authenticate(header)
    if token is None and publish.over_limit(failures):
        raise publish.too_many()
    return token


def openapi_json(request: HttpRequest) -> JsonResponse:
    try:
        token = token_of(request)
    except publish.Refused as refused:
        return publish.refusal(refused)
    response = JsonResponse(document(with_patterns=token is not None))
    response["Cache-Control"] = "private, no-store"
    response["Vary"] = "Authorization"
    return response
