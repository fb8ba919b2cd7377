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
