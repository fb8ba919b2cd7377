"""`{% load realtime %}{% realtime_stream "orders.board" region="board" %}`: a page follows a
topic and applies the fragments sent to it (docs/live-html.md).

The tag renders the app's one static module and a `<realtime-stream>` element carrying the
topic, a signed stream name for the user the page is rendered for (realtime.fragments), and
the topic's position now. Put it before the markup it keeps live, inside the region it names:
the position is read before that markup's rows are, so what is sent after the render is
replayed once (applying a fragment again changes nothing) and nothing is missed.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.contrib.auth.models import AnonymousUser
from django.templatetags.static import static
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString

from realtime.messaging import signed_streams, streams, topic_rules
from realtime.messaging.html_fragments import check_name

register = template.Library()

MODULE = "realtime/live_html.mjs"


@register.simple_tag(takes_context=True)
def realtime_stream(
    context: dict[str, Any],
    topic: str,
    *,
    region: str = "",
    reload_url: str = "",
    signed: bool = True,
    ws_path: str = "/ws/",
) -> SafeString:
    """The element that subscribes the page to `topic` ("user": the signed-in user's own).

    `signed=False` leaves the name unsigned: the topic's `authorize` decides instead. `region`
    is the id of the element to load again from `reload_url` (default: the page's URL) when
    the page missed more than the topic's history holds, or its signed name expired; without
    it, the page reloads."""
    user = page_user(context)
    if topic == topic_rules.USER:
        stream, token = own_stream(user), ""
    else:
        check_name(topic)
        stream, token = topic, signed_streams.sign(topic, user) if signed else ""
    epoch, offset = streams.position(stream) if stream else ("", 0)
    return format_html(
        '<script type="module" src="{}"></script>'
        '<realtime-stream topic="{}"{}{}{}{} ws-path="{}" hidden></realtime-stream>',
        static(MODULE),
        escape(topic),
        attribute("signed", token),
        attribute("since", f"{epoch}:{offset}" if epoch else ""),
        attribute("region", region),
        attribute("reload-url", reload_url),
        escape(ws_path),
    )


def attribute(name: str, value: str) -> SafeString:
    """` name="value"`, escaped even when marked safe (a template's string literals are)."""
    return format_html(' {}="{}"', name, escape(value)) if value else SafeString("")


def page_user(context: dict[str, Any]) -> Any:
    """The user the page is rendered for: the request's, else the context's, else anonymous."""
    request = context.get("request")
    user = getattr(request, "user", None) or context.get("user")
    return user or AnonymousUser()


def own_stream(user: Any) -> str:
    """The stream of topic "user" for the page's user; "" when signed out (no position)."""
    return streams.user_stream(user.pk) if user.is_authenticated else ""
