"""Signed stream names: a page may follow exactly the topics its view chose.

A view (through the `{% realtime_stream %}` tag, or realtime.fragments.signed_stream) signs a
topic name for the user the page is rendered for, with Django's signing (SECRET_KEY, and
SECRET_KEY_FALLBACKS while a key is rotated). A socket that subscribes with that token is let
in without the topic's `authorize`, and even to a name no pattern matches, when the token is
for that topic, for the socket's user as the database has it now, with the same access as
when the page was rendered (password, active, staff, superuser: the fields whose change ends a
user's sockets), and younger than REALTIME_STREAM_SIGNATURE_MAX_AGE seconds.

A token for another topic is refused (`forbidden`). A token whose only fault is time, or that
the user's access or identity outgrew (a sign-in or sign-out since, a right taken away), is
answered `stream_expired`: the page renders its region again through its view, which decides
afresh. The check is made at each subscribe, so after every reconnect.
"""

from __future__ import annotations

import enum
from typing import Any

from django.core import signing
from django.utils.crypto import salted_hmac

from realtime.conf import conf
from realtime.websocket.sessions import ACCESS_FIELDS  # a change to them ends a user's sockets

SALT = "realtime.signed_stream"
MAX_TOKEN_LENGTH = 1024


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    FORBIDDEN = "forbidden"  # not a token for this topic
    EXPIRED = "stream_expired"  # for it, but too old, or for the user as they were: render again


def user_key(user: Any) -> str:
    """Whom a token is for, and with what access: "" for anyone signed out, else the user's
    primary key and a digest of their access fields (no secret leaves: an HMAC)."""
    if user is None or not user.is_authenticated:
        return ""
    access = "\x1f".join(str(getattr(user, field, "")) for field in ACCESS_FIELDS)
    return f"{user.pk}:{salted_hmac(SALT, access, algorithm='sha256').hexdigest()[:32]}"


def sign(topic: str, user: Any) -> str:
    """A token that lets `user` (None or anonymous: a signed-out visitor) subscribe to `topic`."""
    return signing.dumps([topic, user_key(user)], salt=SALT, compress=False)


def verify(token: Any, topic: str, user: Any) -> Verdict:
    """Whether `token` lets `user` subscribe to `topic` now."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return Verdict.FORBIDDEN
    try:
        payload = signing.loads(token, salt=SALT)  # the signature only: what it names first
    except signing.BadSignature:
        return Verdict.FORBIDDEN
    if not isinstance(payload, list) or len(payload) != 2 or payload[0] != topic:
        return Verdict.FORBIDDEN
    if payload[1] != user_key(user):
        return Verdict.EXPIRED  # the view decides again, for the user as they are now
    try:
        signing.loads(token, salt=SALT, max_age=conf.REALTIME_STREAM_SIGNATURE_MAX_AGE)
    except signing.SignatureExpired:
        return Verdict.EXPIRED
    return Verdict.ALLOWED
