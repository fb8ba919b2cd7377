"""The identity of this server process, as clients see it in their welcome message."""

from __future__ import annotations

import os
import socket


def worker_id() -> str:
    """Name this process: REALTIME_WORKER_ID when a supervisor sets it, else host and pid."""
    return os.environ.get("REALTIME_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}"
