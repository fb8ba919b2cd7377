"""daphne's access log through Python logging (logger "daphne.access"), one record per HTTP
request and WebSocket event, with its fields (client, method, path, status, size, protocol,
action) as `extra`: the project's LOGGING decides whether and how it is written (JSON, text,
addresses shortened: realtime/ops/logs.py). daphne's own `--access-log FILE` still works and
replaces it. Query strings are never logged: they may carry a resume position or a token.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from daphne.access import AccessLogGenerator

from realtime.upstream import access_log_stream

logger = logging.getLogger("daphne.access")


def writes_to_stdout(action_logger: Any) -> bool:
    """Whether daphne's action logger is none, or its default: NCSA lines on stdout (what it
    sets up at verbosity 1, query strings included), which this module replaces."""
    if action_logger is None:
        return True
    if not isinstance(action_logger, AccessLogGenerator):
        return False
    return access_log_stream(action_logger) is sys.stdout


def log_access(protocol: str, action: str, details: dict[str, Any]) -> None:
    """daphne's action_logger interface (daphne.access.AccessLogGenerator has the same)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fields = {"protocol": protocol, "action": action, "client": details.get("client")}
    fields["path"] = str(details.get("path") or "").split("?", 1)[0]
    if protocol == "http" and action == "complete":
        fields.update(method=details.get("method"), status=details.get("status"))
        fields["size"] = details.get("size")
        logger.info("%s %s %s", fields["method"], fields["path"], fields["status"], extra=fields)
    elif protocol == "websocket":
        logger.info("WebSocket %s %s", action, fields["path"], extra=fields)
