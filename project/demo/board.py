"""The live order board's server side: the topic it follows, where each order's card goes,
and the columns a board page renders (project/demo/live.py keeps the boards live). Each card
is demo/order_card.html, the same template the live updates render, with keep_live's context
(`object`, `order`, `dom_id`): docs/order-board.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from project.demo.models import Order

TOPIC = "orders.board"
CARD_TEMPLATE = "demo/order_card.html"


def dom_id(order: Order) -> str:
    """The card's element id (keep_live's default: `<model_name>-<pk>`)."""
    return f"order-{order.pk}"


def column_id(order: Order) -> str:
    """The id of the list the order's card belongs in: its status's column."""
    return f"orders-{order.status}"


@dataclass
class Column:
    status: str
    label: str
    cards: list[dict[str, Any]] = field(default_factory=list)

    @property
    def list_id(self) -> str:
        return f"orders-{self.status}"


def card_context(order: Order) -> dict[str, Any]:
    """What demo/order_card.html is rendered with, on the page as in a live update."""
    return {"order": order, "object": order, "dom_id": dom_id(order)}


def columns() -> list[Column]:
    """One column per status, in the statuses' order, each with its orders' cards."""
    by_status = {status: Column(status, label) for status, label in Order.Status.choices}
    for order in Order.objects.all():
        by_status[order.status].cards.append(card_context(order))
    return list(by_status.values())
