"""Live HTML: fragments the server renders, pushed to the pages that show them (docs/live-html.md).

    from realtime import fragments

    fragments.send("orders.board", "append", "orders-new",
                   template="orders/card.html", context={"order": order})
    fragments.send("orders.board", "remove", f"order-{order.pk}")
    fragments.send_to_user(user, "update", "cart-count", html=format_html("{}", count))
    fragments.keep_live(Order, topics=lambda order: ["orders.board"],
                        template="orders/card.html", target=lambda order: f"orders-{order.status}")

    {% load realtime %}{% realtime_stream "orders.board" region="board" %}

A fragment is a topic message (event "html", data {"action", "target", "html"}): stored and
delivered like any other, after the transaction commits, with its offset, resumed and given
once. It is rendered once, with Django's template engine (autoescaping on), whatever the
number of topics and subscribers. The page's `<realtime-stream>` element
(realtime/static/realtime/live_html.mjs) applies it to the element whose id is `target`.
"""

from __future__ import annotations

from typing import Any

from realtime.messaging import signed_streams, topic_rules
from realtime.messaging.html_fragments import (
    ACTIONS,
    EVENT,
    check_name,
    render,
    render_template,
    send,
)
from realtime.messaging.live_models import keep_live
from realtime.models import TopicMessage

__all__ = [
    "ACTIONS",
    "EVENT",
    "keep_live",
    "render",
    "render_template",
    "send",
    "send_to_user",
    "signed_stream",
]


def send_to_user(
    user: Any,
    action: str,
    target: str,
    *,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    html: str | None = None,
    request: Any = None,
) -> TopicMessage:
    """Send a fragment to every open page of `user` (a user or a primary key) that follows
    topic "user" (`{% realtime_stream "user" %}`), on every worker, after commit: content for
    that user alone."""
    data = render(action, target, template=template, context=context, html=html, request=request)
    return topic_rules.send_to_user(user, data, event=EVENT)


def signed_stream(topic: str, user: Any) -> str:
    """A token that lets `user` (None: a signed-out visitor) subscribe to `topic` for
    REALTIME_STREAM_SIGNATURE_MAX_AGE seconds, whatever the topic's `authorize` says: what
    `{% realtime_stream %}` renders into the page."""
    check_name(topic)
    return signed_streams.sign(topic, user)
