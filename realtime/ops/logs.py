"""Logging for a project that serves realtime: readable text (the default) or one JSON object
per line, and client addresses shortened where a setting says so.

    # settings.py (imports nothing of Django: safe at the top of a settings module)
    from realtime.ops.logs import logging_config
    LOGGING = logging_config(os.environ.get("REALTIME_LOG_FORMAT", "text"), access_log=True)

JSON lines carry time (UTC, ISO 8601), level, logger, worker (realtime.server.worker), event
(the message) and the fields of the event (what the caller passed as `extra`, as daphne's
access log does: client, method, path, status, size), and the exception when there is one. In
JSON every logger is written so (Django's, daphne's, Twisted's through the standard library),
one object a line, so a log shipper needs no parser of its own. With mask_addresses, IPv4
addresses are cut to their /24 and IPv6 ones to their /48, in events and fields alike.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from realtime.server.worker import worker_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
# What every LogRecord has: anything else on a record came from `extra`, the event's fields.
STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
IPV4 = re.compile(r"(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3})\.\d{1,3}(?![\d.])")
IPV6_CANDIDATE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:.])")


def logging_config(
    log_format: str = "text", *, access_log: bool = False, mask_addresses: bool = False
) -> dict[str, Any]:
    """A dictConfig for LOGGING. ValueError for a format other than text or json."""
    if log_format not in FORMATS:
        raise ValueError(f"REALTIME_LOG_FORMAT is text or json, not {log_format!r}.")
    json_lines = log_format == "json"
    formatter = {"()": JsonFormatter} if json_lines else {"format": TEXT_FORMAT}
    filters = ["mask_addresses"] if mask_addresses else []
    handler = {"class": "logging.StreamHandler", "formatter": "main", "filters": filters}
    # `serve`'s own lines as they always were in text (journald and supervisors add the time).
    stdout = {**handler, "stream": "ext://sys.stdout"}
    stdout["formatter"] = "main" if json_lines else "bare"
    here = {"handlers": ["console"], "level": "INFO", "propagate": False}
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter, "bare": {"format": "%(message)s"}},
        "filters": {"mask_addresses": {"()": MaskAddresses}},
        "handlers": {"console": handler, "stdout": stdout},
        "loggers": {
            "realtime": here,
            # `manage.py serve` and its supervisor: what they say goes to standard output.
            "realtime.serve": {**here, "handlers": ["stdout"]},
            # One entry per request and WebSocket event (realtime/server/access_log.py).
            "daphne.access": {**here, "level": "INFO" if access_log else "WARNING"},
        },
    }
    if json_lines:  # every other logger too, and none of them twice
        config["root"] = {"handlers": ["console"], "level": "INFO"}
        config["loggers"]["django"] = here
    return config


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "worker": worker_id(),
            "event": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in STANDARD_ATTRIBUTES and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class MaskAddresses(logging.Filter):
    """Shortens client addresses (IPv4 to /24, IPv6 to /48) in the event and its fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = masked(record.getMessage()), ()
        for name, value in list(vars(record).items()):
            if name not in STANDARD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, masked(value))
        return True


def masked(text: str) -> str:
    text = IPV4.sub(r"\1.0", text)
    return IPV6_CANDIDATE.sub(_masked_ipv6, text)


def _masked_ipv6(match: re.Match[str]) -> str:
    try:
        address = ipaddress.IPv6Address(match.group(0))
    except ValueError:
        return match.group(0)
    if address.ipv4_mapped is not None:
        return "::ffff:" + masked(str(address.ipv4_mapped))
    return str(ipaddress.IPv6Network((address, 48), strict=False).network_address) + "/48"
