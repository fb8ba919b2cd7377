"""The example project's topics, registered when Django starts (realtime imports every
installed app's `topics.py`, as the admin does `admin.py`). docs/topics.md explains them."""

from __future__ import annotations

from typing import Any

from realtime import topics


@topics.register("documents.<slug:slug>", presence=True)
def can_view_document(user: Any, slug: str) -> bool:
    """Who is looking at a document: any signed-in user may see and be seen."""
    return bool(user.is_authenticated)


@topics.register("orders.<int:order_id>")
def can_follow_order(user: Any, order_id: int) -> bool:
    """Live updates of an order. Here: staff; an app would check that the order is the user's
    (`Order.objects.filter(pk=order_id, customer=user).exists()`)."""
    return bool(user.is_authenticated and user.is_active and user.is_staff)


@topics.register("news.<slug:section>")
def anyone_may_read_news(user: Any, section: str) -> bool:
    """A public topic (live scores, a status page): anyone, signed in or not."""
    return True


MAX_CHAT_TEXT = 2000


def may_chat(user: Any, room: str) -> bool:
    """Chat rooms: any signed-in user; the room "staff" only staff."""
    return bool(user.is_authenticated and (room != "staff" or user.is_staff))


def chat_message(user: Any, data: Any, room: str) -> dict[str, str]:
    """What a client's chat message becomes: its text, trimmed; refused when empty or long.
    Runs in a thread, with the user as the database has it now."""
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise topics.Rejected("A message needs some text.")
    if len(text) > MAX_CHAT_TEXT:
        raise topics.Rejected(f"A message may have at most {MAX_CHAT_TEXT} characters.")
    return {"text": text.strip()}


topics.register("chat.<slug:room>", authorize=may_chat, publish=chat_message, presence=True)


def wall_note(user: Any, data: Any) -> Any:
    """A public wall: anyone, signed in or not, reads it and pins short notes to it. One
    topic, not one per name: each topic name a client publishes to is a row in the database,
    which an anonymous client should not be able to multiply."""
    if not isinstance(data, str) or not 0 < len(data) <= 280:
        raise topics.Rejected("A note is a text of 1 to 280 characters.")
    return data


topics.register("wall", authorize=lambda user: True, publish=wall_note)
