"""The order board kept live (docs/live-html.md, docs/order-board.md): every order saved or
deleted, after commit, updates the open boards. A new card joins its column, a changed one is
replaced in place or moved to its new column, a deleted one is removed."""

from __future__ import annotations

from project.demo import board
from project.demo.models import Order
from realtime import fragments


def keep_board_live() -> None:
    """Called once, from the app's ready()."""
    fragments.keep_live(
        Order,
        topics=lambda order: [board.TOPIC],  # the topics that show this order
        template=board.CARD_TEMPLATE,  # how one order looks, on the page as in an update
        target=board.column_id,  # the list it belongs in: orders-<status>
        dom_id=board.dom_id,  # its card's element id: order-<pk>
    )
