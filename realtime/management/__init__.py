"""What the realtime management commands share."""

from __future__ import annotations

from django.core.management import CommandError

from realtime.conf import conf


def daphne_application() -> str:
    """The project's ASGI application as daphne names it: ASGI_APPLICATION "mysite.asgi.application"
    is "mysite.asgi:application"."""
    dotted = conf.ASGI_APPLICATION
    module, _, attribute = dotted.rpartition(".")
    if not module:
        raise CommandError(
            'Set ASGI_APPLICATION (for example "mysite.asgi.application"): daphne serves it.'
        )
    return f"{module}:{attribute}"
