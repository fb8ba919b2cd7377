"""Logs (realtime/ops/logs.py, realtime/server/access_log.py): one JSON object per line from every
logger of a real `serve --workers 2` (its supervisor, workers, Django, daphne's access log),
client addresses shortened when asked, and readable text by default."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

import pytest

from realtime.ops.logs import JsonFormatter, MaskAddresses, logging_config, masked
from tests.helpers import PYTHON, free_port, receive_json, ws_connect


def test_a_record_is_one_json_line_with_its_fields_and_exception():
    record = logging.LogRecord("realtime.x", logging.WARNING, "f.py", 1, "sent %s", ("it",), None)
    record.client, record.status = "192.0.2.7:5000", 202
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "WARNING" and entry["logger"] == "realtime.x"
    assert entry["event"] == "sent it" and entry["client"] == "192.0.2.7:5000"
    assert entry["status"] == 202 and "RuntimeError: boom" in entry["exception"]
    assert entry["time"].endswith("+00:00") and entry["worker"]


@pytest.mark.parametrize(
    "text, shown",
    [
        ("from 192.0.2.77:5000", "from 192.0.2.0:5000"),
        ("from 2001:db8:1:2:3::9 now", "from 2001:db8:1::/48 now"),
        ("from ::ffff:198.51.100.9", "from ::ffff:198.51.100.0"),
        ("at 12:34:56, version 1.2.3", "at 12:34:56, version 1.2.3"),
    ],
)
def test_addresses_are_shortened_and_nothing_else(text, shown):
    assert masked(text) == shown


def test_the_mask_filter_reaches_the_event_and_its_fields():
    record = logging.LogRecord("x", logging.INFO, "f.py", 1, "from %s", ("203.0.113.5",), None)
    record.client = "203.0.113.5:1"
    MaskAddresses().filter(record)
    assert record.getMessage() == "from 203.0.113.0" and record.client == "203.0.113.0:1"


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text or json"):
        logging_config("xml")


@pytest.fixture(scope="module")
def json_server(start, redis_server, dev_certs):
    port = free_port()
    certificate = ["--cert", str(dev_certs.cert), "--key", str(dev_certs.key)]
    args = [PYTHON, "manage.py", "serve", "--workers", "2", "--port", str(port), *certificate]
    return start(
        args,
        port,
        REDIS_URL=redis_server.url,
        REALTIME_LOG_FORMAT="json",
        REALTIME_ACCESS_LOG="1",
        REALTIME_LOG_MASK_ADDRESSES="1",
    )


def test_every_line_of_a_served_host_is_json_with_the_access_log(json_server, client_tls):
    port = json_server.port
    with urllib.request.urlopen(f"https://localhost:{port}/healthz?secret=1", context=client_tls):
        pass

    async def socket_opens():
        async with ws_connect(f"wss://localhost:{port}/ws/?broadcasts=x:1", client_tls) as s:
            return (await receive_json(s))["type"]

    assert asyncio.run(socket_opens()) == "welcome"
    json_server.stop()
    lines = [line for line in json_server.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line parses
    loggers = {entry["logger"] for entry in entries}
    assert {"realtime.serve", "daphne.access"} <= loggers, loggers
    assert any(e["event"].endswith("is ready") and e["worker"] for e in entries)
    [health] = [e for e in entries if e.get("path") == "/healthz"]
    assert (health["method"], health["status"], health["protocol"]) == ("GET", 200, "http")
    assert health["client"].startswith("127.0.0.0:")  # shortened
    assert any(e.get("protocol") == "websocket" and e["action"] == "connected" for e in entries)
    assert "secret=1" not in json_server.log() and "broadcasts=x" not in json_server.log()
    workers = {e["worker"] for e in entries if e["logger"] == "daphne.access"}
    assert all(worker.endswith(("-w1", "-w2")) for worker in workers), workers


def test_text_stays_the_default(start, dev_certs):
    port = free_port()
    certificate = ["--cert", str(dev_certs.cert), "--key", str(dev_certs.key)]
    server = start([PYTHON, "manage.py", "serve", "--port", str(port), *certificate], port)
    server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert any(line.startswith("Serving https://") for line in lines), lines  # as always
    assert any(" INFO realtime.server.daphne_server: " in line for line in lines), lines
    assert not any(line.startswith("{") for line in lines)
