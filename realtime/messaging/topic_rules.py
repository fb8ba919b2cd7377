"""Topics: the patterns an app registers, who may subscribe, and sending to a topic or a user.

The public API is realtime.topics (docs/topics.md). A topic name is matched against the
registered patterns, written in Django's path-converter syntax ("orders.<int:order_id>") and
resolved with Django's own URL resolver; the first that matches decides, through its
`authorize(user, **params)`. A name no pattern matches is refused like a forbidden one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.urls import URLPattern, path

from realtime.messaging import streams
from realtime.messaging.layer import send_to_group

logger = logging.getLogger(__name__)

Authorize = Callable[..., bool]
Publish = Callable[..., Any]

# What a client may name: letters, digits and . _ : - (no "/" for the resolver, no "$").
NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")
USER = "user"  # each signed-in socket's own topic, on the wire
RECHECK = "realtime.recheck"  # the channel layer event that re-checks a user's subscriptions
MAX_EVENT_LENGTH = 100


@dataclass(frozen=True)
class Registration:
    pattern: str
    authorize: Authorize
    presence: bool | Authorize  # True, or who (of those authorize allows) sees who is there
    route: URLPattern
    publish: Publish | None = None  # what a client's publish becomes; None: clients may not


class Rejected(Exception):
    """Raised by a topic's `publish` function: the client's message is not sent, and its
    client is told why (the `detail` of a `rejected` error)."""

    def __init__(self, reason: str = "Rejected.") -> None:
        super().__init__(reason)
        self.reason = str(reason)


registrations: dict[str, Registration] = {}


def _no_view(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a topic pattern is never called as a view")


def register(
    pattern: str,
    *,
    authorize: Authorize | None = None,
    publish: Publish | None = None,
    presence: bool | Authorize = False,
) -> Any:
    """Register a topic pattern; `authorize(user, **params) -> bool` decides who may subscribe.

    `publish(user, data, **params)` lets clients publish there (those `authorize` allows): it
    runs in a thread (it may use the database) and returns the data to send, possibly changed,
    or raises Rejected("reason"). Without it, clients may not publish to the topic.

    `presence=True` makes it a presence topic: every signed-in subscriber is counted, and every
    subscriber told who is there. A function `presence(user, **params) -> bool` instead counts
    every subscriber but tells only those it allows (decided when they subscribe): a staff-only
    "who's online" that every signed-in page joins. Usable as a decorator on `authorize`.
    Registering the same pattern again replaces it.
    """
    if authorize is None:
        return lambda function: register(
            pattern, authorize=function, publish=publish, presence=presence
        )
    if not callable(authorize):
        raise TypeError("authorize must be a function (user, **params) -> bool")
    if publish is not None and not callable(publish):
        raise TypeError("publish must be a function (user, data, **params) -> data")
    if not (isinstance(presence, bool) or callable(presence)):
        raise TypeError("presence must be True, False or a function (user, **params) -> bool")
    if pattern.startswith("$") or pattern == USER or "/" in pattern:
        raise ValueError(f"{pattern!r} cannot be a topic pattern (reserved or contains '/')")
    route = path(pattern, _no_view)
    registrations[pattern] = Registration(pattern, authorize, presence, route, publish)
    return authorize


def match(name: str) -> tuple[Registration, dict[str, Any]] | None:
    """The registration a topic name belongs to and its parameters, or None."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return None
    for registration in registrations.values():
        found = registration.route.resolve(name)
        if found is not None:
            return registration, found.kwargs
    return None


def is_presence_topic(name: str) -> bool:
    found = match(name)
    return found is not None and found[0].presence is not False


def sees_presence(user: Any, name: str) -> bool:
    """Whether a subscriber of presence topic `name` is told who is there (may run the app's
    `presence` function, which may touch the database; one that fails shows nothing)."""
    found = match(name)
    if found is None or found[0].presence is False:
        return False
    registration, params = found
    if registration.presence is True:
        return True
    try:
        return bool(registration.presence(user, **params))
    except Exception:  # noqa: BLE001 - an app's check that fails shows nothing
        logger.exception("presence() of topic %s failed; not telling this subscriber", name)
        return False


def presence_needs_database(name: str) -> bool:
    """Whether sees_presence() runs an app function for `name` (then: in a database thread)."""
    found = match(name)
    return found is not None and callable(found[0].presence)


def allowed(user: Any, name: str) -> bool:
    """Whether `user` may subscribe to topic `name` now (runs the app's authorize)."""
    found = match(name)
    if found is None:
        return False
    registration, params = found
    return bool(registration.authorize(user, **params))


def check(name: str, data: Any, event: str) -> None:
    """Raise ValueError unless `event` and `data` may be sent to topic `name`."""
    if not isinstance(event, str) or not 0 < len(event) <= MAX_EVENT_LENGTH:
        raise ValueError(f"event must be a string of 1 to {MAX_EVENT_LENGTH} characters")
    streams.check_text(event, "event")
    streams.check_data(data)


def send(
    topic: str, data: Any, *, event: str = "message", ephemeral: bool = False
) -> streams.TopicMessage | None:
    """Send `data` to every subscriber of `topic`, on every worker, once the transaction commits.

    `ephemeral=True`: at once, to the sockets subscribed now only; not stored, no offset, never
    replayed, and dropped for a socket that is behind (typing indicators, cursors). Returns
    None then.

    Raises ValueError for a topic no registered pattern matches, or data that is not JSON or
    larger than REALTIME_TOPIC_MAX_DATA.
    """
    if match(topic) is None:
        raise ValueError(
            f"No registered topic pattern matches {topic!r}: register one with "
            f"realtime.topics.register() (names are letters, digits and . _ : -)."
        )
    check(topic, data, event)
    if ephemeral:
        send_to_group(streams.TOPICS_GROUP, streams.ephemeral_event(topic, data, event))
        return None
    return streams.store(topic, data, event=event)


def send_to_user(user: Any, data: Any, *, event: str = "message") -> streams.TopicMessage:
    """Send `data` to every open socket of `user` (a user or a primary key), on every worker,
    once the transaction commits. It arrives as a `message` on topic "user"."""
    pk = getattr(user, "pk", user)
    if pk is None:
        raise ValueError("send_to_user() needs a saved user or a primary key")
    check(USER, data, event)
    return streams.store(streams.user_stream(pk), data, event=event)


def recheck(user: Any) -> None:
    """Ask every worker to check `user`'s subscriptions again (after the transaction commits)
    and end those `authorize` no longer allows, with `unsubscribed` (reason "forbidden")."""
    pk = getattr(user, "pk", user)
    transaction.on_commit(lambda: send_to_group(streams.TOPICS_GROUP, recheck_event(pk)))


def recheck_after_permissions_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """`m2m_changed` of users' permissions and groups and of groups' permissions: the users
    whose permissions may have changed have their subscriptions checked again (an `authorize`
    may ask for a permission: realtime.stats does)."""
    if action == "pre_clear":
        instance._realtime_cleared_users = users_behind(sender, instance, reverse, None)
    elif action == "post_clear":
        for pk in instance.__dict__.pop("_realtime_cleared_users", set()):
            recheck(pk)
    elif action in ("post_add", "post_remove"):
        for pk in users_behind(sender, instance, reverse, pk_set):
            recheck(pk)


def users_behind(sender: Any, instance: Any, reverse: bool, pk_set: Any) -> set[Any]:
    """The users an m2m change reaches: the user itself, the users of a group, or those of
    the groups (or the users) in `pk_set` (None: every one related to `instance`)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    users = get_user_model()._default_manager
    if sender is Group.permissions.through:
        if not reverse:  # a group's permissions
            groups: Any = [instance]
        elif pk_set is not None:
            groups = Group.objects.filter(pk__in=pk_set)
        else:
            groups = Group.objects.filter(permissions=instance)
        return set(users.filter(groups__in=groups).values_list("pk", flat=True))
    if not reverse:  # a user's own permissions or groups
        return {instance.pk}
    if pk_set is not None:
        return set(pk_set)
    field = "user_permissions" if sender is get_user_model().user_permissions.through else "groups"
    return set(users.filter(**{field: instance}).values_list("pk", flat=True))


def recheck_event(pk: Any) -> dict[str, Any]:
    return {"type": RECHECK, "user": str(pk)}
