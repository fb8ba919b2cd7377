"""Sending broadcasts from app code, views, signals, tasks and the shell: the public API.

    from realtime import broadcast
    broadcast.send("Deploy at 18:00", level="warning", audience="authenticated")

`send()` stores the broadcast, then, once the transaction commits, publishes it to its
audience on every worker (realtime.messaging.sending).
"""

from __future__ import annotations

from realtime.messaging.sending import LayerUnavailable, audiences_for, send, send_broadcast

__all__ = ["LayerUnavailable", "audiences_for", "send", "send_broadcast"]
