"""Protocol versions on a real server (daphne over TLS, Redis): the previous version's
browser client (tests/js/realtime_v2.mjs, run in Node) connects, resumes and gets what it
missed; a socket offering realtime.v3 speaks version 3; one offering only a version no longer
served is told to reload and closed with 4010, and the current client then calls onReload
and does not reconnect."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import threading

import pytest
from websockets.exceptions import ConnectionClosed

from realtime.common.close_codes import PROTOCOL_UNSUPPORTED
from tests.helpers import (
    ROOT,
    daphne_tls_args,
    free_port,
    receive_json,
    send_broadcasts,
    ws_connect,
)

NODE = shutil.which("node")
CURRENT = ROOT / "realtime" / "static" / "realtime" / "realtime.mjs"
PREVIOUS = ROOT / "tests" / "js" / "realtime_v2.mjs"
RUNNER = ROOT / "tests" / "js" / "run_client.mjs"


@pytest.fixture(scope="module")
def server(start, dev_certs, redis_server):
    port = free_port()
    return start(daphne_tls_args(port, dev_certs), port, REDIS_URL=redis_server.url)


def url_of(server) -> str:
    return f"wss://localhost:{server.port}/ws/"


def test_a_socket_offering_v3_speaks_version_3_and_one_offering_none_version_2(server, client_tls):
    async def scenario():
        async with ws_connect(url_of(server), client_tls, subprotocols=["realtime.v3"]) as v3:
            assert v3.subprotocol == "realtime.v3"
            assert (await receive_json(v3))["protocol"] == 3
        # A client's preference order decides among the versions served.
        offered = ["realtime.v2", "realtime.v3"]
        async with ws_connect(url_of(server), client_tls, subprotocols=offered) as v2:
            assert v2.subprotocol == "realtime.v2"
            assert (await receive_json(v2))["protocol"] == 2
        async with ws_connect(url_of(server), client_tls) as unnamed:
            assert unnamed.subprotocol is None
            welcome = await receive_json(unnamed)
            assert welcome["type"] == "welcome" and welcome["protocol"] == 2

    asyncio.run(scenario())


def test_a_socket_offering_only_an_old_version_is_told_to_reload_and_closed_with_4010(
    server, client_tls
):
    async def scenario():
        async with ws_connect(url_of(server), client_tls, subprotocols=["realtime.v1"]) as old:
            assert old.subprotocol == "realtime.v1"  # accepted only to be told why
            message = await receive_json(old)
            assert message["type"] == "reload" and message["reason"] == "protocol"
            assert "realtime.v1" in message["detail"]
            with pytest.raises(ConnectionClosed):
                await receive_json(old)
            assert old.close_code == PROTOCOL_UNSUPPORTED

    asyncio.run(scenario())


class NodeClient:
    """A client module run by tests/js/run_client.mjs in Node: its events, one per line."""

    def __init__(self, module, url: str, origin: str, ca_cert) -> None:
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(ca_cert)}
        self.process = subprocess.Popen(
            [NODE, "--experimental-websocket", "--no-warnings", RUNNER, module, url, origin],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.said: list[str] = []  # every line, for a failure's message
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.said.append(line)
            self.lines.put(line)

    def next(self, event: str, timeout: float = 15) -> dict:
        """The next event of that kind (others before it are skipped)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                said = "".join(self.said)
                raise AssertionError(f"no {event} from node; it said:\n{said}") from None
            try:
                got = json.loads(line)
            except ValueError:
                raise AssertionError(f"node said: {line}") from None
            if got["event"] == event:
                return got["value"]

    def until(self, event: str, matches, timeout: float = 15) -> list[dict]:
        """Events of that kind until one matches; all of them."""
        seen = []
        while True:
            seen.append(self.next(event, timeout))
            if matches(seen[-1]):
                return seen

    def command(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


@pytest.fixture
def node_client(server, dev_certs):
    if NODE is None:
        pytest.skip("node is not installed")
    clients = []

    def _start(module, url: str | None = None) -> NodeClient:
        client = NodeClient(
            module, url or url_of(server), f"https://localhost:{server.port}", dev_certs.ca_cert
        )
        clients.append(client)
        return client

    yield _start
    for client in clients:
        client.stop()


def test_the_previous_versions_client_connects_resumes_and_gets_what_it_missed(
    server, node_client, server_env, redis_server
):
    client = node_client(PREVIOUS)
    assert client.next("socket")["protocol"] == ""  # it offers no subprotocol
    opened = client.until("state", lambda s: s["state"] == "open")[-1]
    assert opened["welcome"]["protocol"] == 2

    send_broadcasts(server_env, redis_server.url, ["live to v2"])
    assert client.next("broadcast")["message"] == "live to v2"

    client.command("drop")  # closed; its reconnect waits for "release"
    client.until("state", lambda s: s["state"] == "closed")
    missed = send_broadcasts(server_env, redis_server.url, ["missed 1", "missed 2"])
    client.command("release")
    assert "?broadcasts=" in client.next("socket")["url"]  # resumes from its position
    assert client.until("state", lambda s: s["state"] == "open")[-1]["welcome"]["protocol"] == 2
    replayed = [client.next("broadcast") for _ in missed]  # after the welcome
    assert [b["message"] for b in replayed] == ["missed 1", "missed 2"]

    send_broadcasts(server_env, redis_server.url, ["live again"])
    assert client.next("broadcast")["message"] == "live again"
    events = [json.loads(line)["event"] for line in client.said]
    assert "error" not in events and "resume_failed" not in events, client.said
    client.command("quit")


def test_the_current_client_speaks_version_3(server, node_client):
    client = node_client(CURRENT)
    assert client.next("socket")["protocol"] == "realtime.v3"
    opened = client.until("state", lambda s: s["state"] == "open")[-1]
    assert opened["welcome"]["protocol"] == 3
    client.command("quit")
