"""POST /api/publish: other services (a Go worker, a cron script with curl) send a broadcast
or a topic message, with a bearer token (realtime/api/tokens.py), and get 202 with its id.

    curl --cacert ca.pem -H "Authorization: Bearer rtk_..." -H "Content-Type: application/json" \\
         -d '{"message": "Deploy at 18:00", "level": "warning"}' https://host/api/publish

A body is a broadcast ({"message", "level"?, "audience"?}) or a topic message ({"topic",
"event"?, "data"}), stored and published as app code's are (after commit, every worker). Each
token may make REALTIME_API_RATE_LIMIT requests per REALTIME_API_RATE_WINDOW seconds, and each
address as many failed ones (a wrong token; /api/openapi.json's count too). A token does only
what its creator may now (realtime/api/tokens.py), and never sends to the server's own
"realtime.*" topics. /api/openapi.json (realtime/api/openapi.py) describes every answer: errors are
{"error": code, "detail": sentence}.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from realtime import broadcast, topics
from realtime.api import tokens
from realtime.common.addresses import request_client_key
from realtime.conf import conf
from realtime.models import ApiToken
from realtime.web.counters import counters_store

logger = logging.getLogger(__name__)

BROADCAST_FIELDS = {"message", "level", "audience"}
TOPIC_FIELDS = {"topic", "event", "data"}
BODY_OVERHEAD = 4096  # bytes of a body besides its data


class Refused(Exception):
    """An answer other than 202: status, error code, and a sentence for the caller."""

    def __init__(self, status: int, code: str, detail: str, **headers: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    response = JsonResponse(body, status=status)
    for name, value in (headers or {}).items():
        response[name.replace("_", "-")] = value
    response["Cache-Control"] = "no-store"
    return response


def refusal(refused: Refused) -> Any:
    body = {"error": refused.code, "detail": refused.detail}
    return answer(refused.status, body, refused.headers)


@csrf_exempt
def publish(request: HttpRequest) -> JsonResponse:
    try:
        kind, pk = handle(request)
    except Refused as refused:
        return refusal(refused)
    return answer(202, {"id": pk, "kind": kind})


def handle(request: HttpRequest) -> tuple[str, int]:
    if request.method != "POST":
        raise Refused(405, "method_not_allowed", "Only POST is allowed here.", Allow="POST")
    token = authenticated(request)
    body = json_body(request)
    if "topic" in body:
        return "topic", publish_topic(token, body)
    return "broadcast", publish_broadcast(token, body)


# --- Who is asking ---------------------------------------------------------------------------


def authenticated(request: HttpRequest) -> ApiToken:
    """The request's valid token, within its rate. Only failed requests count against their
    address: wrong tokens from anyone (or from a balancer's one address) never hold back a
    valid token."""
    token = tokens.authenticate(request.headers.get("Authorization"))
    if token is None:
        if over_limit(failures_key(request)):
            raise too_many()
        raise Refused(
            401,
            "unauthorized",
            "Send a valid, unrevoked API token: Authorization: Bearer rtk_...",
            WWW_Authenticate='Bearer realm="realtime"',
        )
    if over_limit(f"realtime:api:token:{token.token_hash[:32]}"):
        raise too_many()
    tokens.mark_used(token)
    return token


def failures_key(request: HttpRequest) -> str:
    """The counter of failed requests (no or a wrong token) from the request's address."""
    return f"realtime:api:failures:{request_client_key(request.META)}"


def at_limit(key: str) -> bool:
    """Whether `key` has used up REALTIME_API_RATE_LIMIT in this window, counting nothing: the
    next over_limit() would refuse. Redis unreachable: no, as over_limit()."""
    limit = conf.REALTIME_API_RATE_LIMIT
    if limit <= 0:
        return False
    try:
        [count] = counters_store().get([key])
    except redis.RedisError as exc:
        logger.warning("API rate limit: Redis did not answer (%s); not limiting.", exc)
        return False
    return count >= limit


def over_limit(key: str) -> bool:
    """Count a request against `key`; whether it is past REALTIME_API_RATE_LIMIT in this
    window. With Redis unreachable nothing is limited: publishing must not depend on it."""
    limit, window = conf.REALTIME_API_RATE_LIMIT, conf.REALTIME_API_RATE_WINDOW
    if limit <= 0:
        return False
    try:
        [count] = counters_store().increment([key], window)
    except redis.RedisError as exc:
        logger.warning("API rate limit: Redis did not answer (%s); not limiting.", exc)
        return False
    return count > limit


def too_many() -> Refused:
    window = str(int(conf.REALTIME_API_RATE_WINDOW))
    detail = f"Too many requests: try again in {window} s."
    return Refused(429, "rate_limited", detail, Retry_After=window)


# --- What is sent ----------------------------------------------------------------------------


def json_body(request: HttpRequest) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise Refused(415, "unsupported_media_type", "Send a JSON body: application/json.")
    most = most_body_bytes()
    if int(request.META.get("CONTENT_LENGTH") or 0) > most:
        raise Refused(413, "too_large", f"A body is at most {most} bytes.")
    try:
        raw = request.body
    except RequestDataTooBig:
        raise Refused(413, "too_large", f"A body is at most {most} bytes.") from None
    if len(raw) > most:  # a body without Content-Length (chunked)
        raise Refused(413, "too_large", f"A body is at most {most} bytes.")
    try:
        body = json.loads(raw, parse_constant=refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Refused(400, "invalid_json", f"The body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Refused(400, "invalid_body", "The body is a JSON object.")
    return body


def most_body_bytes() -> int:
    """The data limit (REALTIME_TOPIC_MAX_DATA, counted as compact UTF-8 by check_data) as a
    client may write it: every character escaped (\\uXXXX\\uXXXX: 12 bytes), plus the rest."""
    return conf.REALTIME_TOPIC_MAX_DATA * 12 + BODY_OVERHEAD


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def unknown_fields(body: dict[str, Any], known: set[str]) -> None:
    extra = sorted(set(body) - known)
    if extra:
        raise Refused(400, "invalid_body", f"Unknown fields: {', '.join(extra)}.")


def publish_broadcast(token: ApiToken, body: dict[str, Any]) -> int:
    unknown_fields(body, BROADCAST_FIELDS)
    if not tokens.allows_broadcasts(token):
        raise Refused(403, "forbidden", "This token may not send broadcasts.")
    creator_still_may(token, tokens.BROADCASTS)
    fields = {"level": "info", "audience": "everyone", **body}
    if not all(isinstance(fields.get(name), str) for name in BROADCAST_FIELDS):
        raise Refused(400, "invalid_body", "message, level and audience are strings.")
    try:
        sent = broadcast.send(fields["message"], level=fields["level"], audience=fields["audience"])
    except ValidationError as exc:
        raise Refused(400, "invalid_broadcast", " ".join(exc.messages)) from None
    logger.info("API token %s sent broadcast #%s", token.prefix, sent.pk)
    return sent.pk


def creator_still_may(token: ApiToken, scope: str) -> None:
    """Refuse a scope whose right the token's creator no longer holds (taken away, deactivated,
    deleted): a token never outlives its creator's rights."""
    if token.created_by_id is None:
        detail = (
            "This token acts for no user (made before tokens carried their creator's rights, "
            "or its creator was deleted): make a new one with `manage.py apitoken create "
            "--user NAME` or in the admin."
        )
        raise Refused(403, "forbidden", detail)
    if not tokens.creator_holds(token, scope):
        detail = (
            f"The user this token acts for no longer holds {tokens.right_for(scope)} (or "
            "was deactivated or deleted): a token does only what its creator may."
        )
        raise Refused(403, "forbidden", detail)


def publish_topic(token: ApiToken, body: dict[str, Any]) -> int:
    unknown_fields(body, TOPIC_FIELDS)
    topic, event = body.get("topic"), body.get("event", "message")
    if not isinstance(topic, str) or not isinstance(event, str) or "data" not in body:
        raise Refused(400, "invalid_body", "topic and event are strings, and data is required.")
    if tokens.is_internal(topic):
        internal = tokens.INTERNAL_TOPICS
        detail = f"Topics named {internal}* are the server's own: no token may send to them."
        raise Refused(403, "forbidden", detail)
    if not tokens.allows_topic(token, topic):
        raise Refused(403, "forbidden", "This token may not send to that topic.")
    creator_still_may(token, tokens.TOPIC + topic)
    try:
        stored = topics.send(topic, body["data"], event=event)
    except ValueError as exc:
        raise Refused(400, "invalid_message", str(exc)) from None
    logger.info("API token %s sent message #%s to %s", token.prefix, stored.pk, topic)
    return stored.pk
