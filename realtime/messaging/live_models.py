"""Model broadcasting: a model's rows kept live on the pages that list them (docs/live-html.md).

`keep_live(Order, topics=..., template=..., target=...)` connects Django's model signals: once a
transaction that created, changed or deleted an Order commits, the row as then stored is
rendered once and sent (realtime.messaging.html_fragments) to the topics `topics(order)` names:

- created: `append` to the container `target(order)`;
- changed: `replace` of its element, or `append` to its new container when `target(order)`
  changed (the page moves an element whose id it already shows); `remove` on the topics it
  left;
- deleted: `remove` of its element.

Its element's id is `dom_id(order)` (default "<model_name>-<pk>"), which the template must
render; the template's context holds `object`, the model's name (`order`) and `dom_id`.
What sends no model signal sends nothing here either: QuerySet.update(), bulk_create(),
bulk_update(), raw SQL. (QuerySet.delete() does send: with a receiver connected, Django
loads the rows it deletes and signals each.) Finding the old topics and container costs one
query by primary key before each save of an existing row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import models, transaction
from django.db.models.signals import post_delete, post_save, pre_save

from realtime.messaging import html_fragments as fragments

logger = logging.getLogger("realtime.fragments")

BEFORE = "_realtime_live_before"  # on an instance being saved: (topics, target) as stored


@dataclass(frozen=True)
class LiveModel:
    model: type[models.Model]
    topics: Callable[[Any], Iterable[str]]
    template: str
    target: Callable[[Any], str]
    dom_id: Callable[[Any], str]

    def topics_of(self, instance: Any) -> set[str]:
        names = self.topics(instance)
        return {names} if isinstance(names, str) else set(names)  # one name, or several

    def context(self, instance: Any) -> dict[str, Any]:
        return {
            "object": instance,
            self.model._meta.model_name: instance,
            "dom_id": self.dom_id(instance),
        }


def keep_live(
    model: type[models.Model],
    *,
    topics: Callable[[Any], Iterable[str]],
    template: str,
    target: str | Callable[[Any], str],
    dom_id: Callable[[Any], str] | None = None,
) -> LiveModel:
    """Send `model`'s creates, changes and deletes, rendered with `template`, to the topics
    `topics(instance)` names (a name or several), after commit (see the module's docstring).
    `target` is the id of the container new rows are appended to, or a function of the row
    giving it. Calling it again for the same model replaces the earlier call. A function of
    the app's that fails is logged (logger realtime.fragments), never raised into the save or
    delete."""
    if not callable(topics):
        raise TypeError("topics must be a function (instance) -> topic names")
    live = LiveModel(
        model=model,
        topics=topics,
        template=template,
        target=target if callable(target) else (lambda instance: target),
        dom_id=dom_id or partial(default_dom_id, model._meta.model_name),
    )
    uid = f"realtime.keep_live:{model._meta.label}"
    for signal in (pre_save, post_save, post_delete):  # Django keeps a uid's first receiver
        signal.disconnect(sender=model, dispatch_uid=uid)
    pre_save.connect(partial(remember_before, live), sender=model, weak=False, dispatch_uid=uid)
    post_save.connect(partial(after_save, live), sender=model, weak=False, dispatch_uid=uid)
    post_delete.connect(partial(after_delete, live), sender=model, weak=False, dispatch_uid=uid)
    return live


def default_dom_id(model_name: str, instance: Any) -> str:
    return f"{model_name}-{instance.pk}"


def remember_before(live: LiveModel, sender: Any, instance: Any, raw: bool, **kwargs: Any) -> None:
    """Before a row that exists is saved: the topics and container it is shown in now."""
    if raw or instance._state.adding or instance.pk is None:
        return
    try:
        stored = sender._default_manager.using(kwargs.get("using")).filter(pk=instance.pk).first()
        if stored is not None:
            instance.__dict__[BEFORE] = (live.topics_of(stored), live.target(stored))
    except Exception:  # the app's topics() or target() failed: the save goes on, as new
        logger.exception("Reading a live model's topics before its save failed")


def after_save(
    live: LiveModel, sender: Any, instance: Any, created: bool, raw: bool, **kwargs: Any
) -> None:
    if raw:  # loaddata: nothing happened that a page saw
        return
    before = None if created else instance.__dict__.pop(BEFORE, None)
    using = kwargs.get("using")
    send = partial(send_saved, live, instance.pk, before, using)
    transaction.on_commit(partial(logged, send), using=using)


def after_delete(live: LiveModel, sender: Any, instance: Any, **kwargs: Any) -> None:
    try:  # now: the row's relations may be gone after the commit
        names, element = live.topics_of(instance), live.dom_id(instance)
    except Exception:  # the delete goes on; no page is told
        logger.exception("Reading a deleted live model's topics failed")
        return
    send = partial(send_removed, names, element)
    transaction.on_commit(partial(logged, send), using=kwargs.get("using"))


def send_saved(
    live: LiveModel, pk: Any, before: tuple[set[str], str] | None, using: str | None
) -> None:
    """Render the row as committed and send it where it is shown now; remove it where it is
    no longer. Nothing when it was deleted since (its delete sent the `remove`).

    The row is read locked (on databases that lock rows) until its fragments are stored, so
    that two processes sending the same row read and store in turn; what is left is the
    moment between one's commit and its publish, which the other spends waiting for the lock,
    reading and rendering."""
    with transaction.atomic(using=using):
        rows = live.model._default_manager.using(using).select_for_update()
        stored = rows.filter(pk=pk).first()
        if stored is not None:
            send_row(live, stored, before)


def send_row(live: LiveModel, stored: Any, before: tuple[set[str], str] | None) -> None:
    names, target, element = live.topics_of(stored), live.target(stored), live.dom_id(stored)
    old_names, old_target = before if before is not None else (set(), None)
    replaced = sorted(names & old_names) if old_target == target else []
    appended = sorted(names - set(replaced))
    html = fragments.render_template(live.template, live.context(stored))
    if replaced:
        fragments.send(replaced, "replace", element, html=html)
    if appended:
        fragments.send(appended, "append", target, html=html)
    send_removed(old_names - names, element)


def send_removed(names: set[str], element: str) -> None:
    if names:
        fragments.send(sorted(names), "remove", element)


def logged(send: Callable[[], None]) -> None:
    """Run a send after commit; one that fails is logged, not raised into the code that
    committed (the row is saved whatever a page shows)."""
    try:
        send()
    except Exception:
        logger.exception("Sending a live model's fragment failed")
