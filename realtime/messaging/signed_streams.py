"""Signed stream names: a page may follow exactly the topics its view chose.

A view (through the `{% realtime_stream %}` tag, or realtime.fragments.signed_stream) signs a
topic name for the user the page is rendered for, with Django's signing (SECRET_KEY, and
SECRET_KEY_FALLBACKS while a key is rotated). A socket that subscribes with that token is let
in without the topic's `authorize`, and even to a name no pattern matches, as long as the
token is for that topic, for the socket's user as the database has it now, and younger than
REALTIME_STREAM_SIGNATURE_MAX_AGE seconds. The check is made at each subscribe (so after
every reconnect); a subscription it let in is not re-checked by `authorize` later, and ends
with its socket (a sign-out closes it).
"""

from __future__ import annotations

import enum
from typing import Any

from django.core import signing

from realtime.conf import conf

SALT = "realtime.signed_stream"
MAX_TOKEN_LENGTH = 1024


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    FORBIDDEN = "forbidden"  # not a token for this topic and user
    EXPIRED = "stream_expired"  # it was, but is older than REALTIME_STREAM_SIGNATURE_MAX_AGE


def user_key(user: Any) -> str:
    """Whom a token is for: a signed-in user's primary key, or "" for anyone signed out."""
    if user is None or not user.is_authenticated:
        return ""
    return str(user.pk)


def sign(topic: str, user: Any) -> str:
    """A token that lets `user` (None or anonymous: a signed-out visitor) subscribe to `topic`."""
    return signing.dumps([topic, user_key(user)], salt=SALT, compress=False)


def verify(token: Any, topic: str, user: Any) -> Verdict:
    """Whether `token` lets `user` subscribe to `topic` now."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return Verdict.FORBIDDEN
    try:
        payload = signing.loads(token, salt=SALT)  # the signature only: whom it names first
    except signing.BadSignature:
        return Verdict.FORBIDDEN
    if payload != [topic, user_key(user)]:
        return Verdict.FORBIDDEN
    try:
        signing.loads(token, salt=SALT, max_age=conf.REALTIME_STREAM_SIGNATURE_MAX_AGE)
    except signing.SignatureExpired:
        return Verdict.EXPIRED
    return Verdict.ALLOWED
