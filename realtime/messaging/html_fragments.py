"""Fragments of HTML as topic messages: how they are rendered, checked and stored (the public
API and what a page does with them: realtime.fragments, docs/live-html.md).

A fragment is the data {"action", "target", "html"} of a topic message whose event is "html";
it is rendered once and stored once per topic, then published like any topic message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from django.template.loader import render_to_string
from django.utils.html import conditional_escape

from realtime.messaging import streams, topic_rules
from realtime.models import TopicMessage

EVENT = "html"
ACTIONS = ("append", "prepend", "replace", "update", "remove", "before", "after")
TARGET = re.compile(r"[^\s]{1,200}")  # an element id: what getElementById() takes, no selector


def render(
    action: str,
    target: str,
    *,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    html: str | None = None,
    request: Any = None,
) -> dict[str, Any]:
    """A fragment's data: the action, the target's id and the HTML, rendered once.

    `template` is rendered with `context` (and `request`, for context processors) by Django's
    engine, autoescaping on. `html` is sent as given only when marked safe (format_html(),
    mark_safe(), a rendered template); a plain string is escaped, so it shows as text. "remove"
    takes neither. Raises ValueError for anything else.
    """
    if action not in ACTIONS:
        raise ValueError(f"Unknown action {action!r}; one of: {', '.join(ACTIONS)}.")
    if not isinstance(target, str) or not TARGET.fullmatch(target):
        raise ValueError("target must be an element id: 1 to 200 characters, no whitespace.")
    if action == "remove":
        if template is not None or html is not None:
            raise ValueError('"remove" takes no template and no html.')
        return {"action": action, "target": target}
    if (template is None) == (html is None):
        raise ValueError(f'"{action}" needs a template or html (one of them).')
    if template is not None:
        html = render_template(template, context, request)
    return {"action": action, "target": target, "html": str(conditional_escape(html))}


def render_template(
    template: str, context: dict[str, Any] | None = None, request: Any = None
) -> str:
    """A template rendered by Django's engine, autoescaping on: HTML to send as `html`."""
    return render_to_string(template, context or {}, request=request)


def send(
    topic: str | Iterable[str],
    action: str,
    target: str,
    *,
    template: str | None = None,
    context: dict[str, Any] | None = None,
    html: str | None = None,
    request: Any = None,
) -> list[TopicMessage]:
    """Render a fragment once and send it to the subscribers of `topic` (a name, or several),
    on every worker, once the transaction commits; stored, so that a page that reconnects
    gets it (once). The names need no registered pattern: pages follow them through signed
    stream names (`{% realtime_stream %}`), or through a pattern's `authorize`.

    Raises ValueError for an invalid name, action or target, or a fragment larger than
    REALTIME_TOPIC_MAX_DATA.
    """
    names = [topic] if isinstance(topic, str) else list(topic)
    for name in names:
        check_name(name)
    data = render(action, target, template=template, context=context, html=html, request=request)
    topic_rules.check("", data, EVENT)  # its size, once for every topic
    return [streams.store(name, data, event=EVENT) for name in names]


def check_name(name: Any) -> None:
    """Raise ValueError unless `name` is a topic a fragment may go to (not "user")."""
    if not isinstance(name, str) or not topic_rules.NAME.fullmatch(name) or name == "user":
        raise ValueError(
            f"{name!r} is not a topic name: 1 to 200 letters, digits and . _ : - "
            '("user" is each user\'s own: use send_to_user()).'
        )
