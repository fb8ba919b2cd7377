"""Writing an open WebSocket's bytes at once (realtime/server/writethrough.py).

Real Twisted transports (tcp.Server, and Twisted's TLS with the project's certificate options)
over a real socket pair, driven by hand through a MemoryReactorClock: the reactor is the only
stand-in, so that a test can tell whether bytes reached the peer with no reactor iteration at
all, which is the point of the write-through. End to end, a real daphne says that its WSS
sockets write through; broadcasts and pings go this way in every end-to-end test of the suite.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import types
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from realtime.server.endpoints import server_tls_options
from realtime.server.writethrough import write_through
from tests.helpers import receive_json, ws_connect

PEER = ("127.0.0.1", 40000)


class Pair:
    """A Twisted tcp.Server on one end of a socket pair, the test's plain socket on the other."""

    def __init__(self, protocol: Protocol, reactor: MemoryReactorClock | None = None) -> None:
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.settimeout(5)
        self.reactor = reactor or MemoryReactorClock()
        port = types.SimpleNamespace(_realPortNumber=8443)
        self.tcp = tcp.Server(ours, protocol, PEER, port, 1, self.reactor)
        protocol.makeConnection(self.tcp)

    def waiting_to_write(self) -> bool:
        """Whether Twisted holds bytes until the socket is writable (epoll would watch it)."""
        return self.tcp in self.reactor.getWriters()

    def nothing_arrived(self) -> bool:
        self.peer.setblocking(False)
        try:
            return not self.peer.recv(1)
        except BlockingIOError:
            return True
        finally:
            self.peer.settimeout(5)

    def close(self) -> None:
        self.peer.close()
        self.tcp.socket.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    pair = Pair(Protocol())
    yield pair
    pair.close()


def receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the connection closed"
        data += chunk
    return data


def test_a_write_reaches_the_peer_at_once_when_nothing_is_buffered(pair):
    assert write_through(pair.tcp) == {"tcp"}
    pair.tcp.write(b"frame")
    assert not pair.waiting_to_write()
    assert receive(pair.peer, 5) == b"frame"


def test_without_it_twisted_waits_for_writability(pair):
    pair.tcp.write(b"frame")
    assert pair.waiting_to_write() and pair.nothing_arrived()
    pair.tcp.doWrite()
    assert receive(pair.peer, 5) == b"frame"


def test_a_write_queues_behind_bytes_twisted_still_holds(pair):
    FileDescriptor.write(pair.tcp, b"first ")  # held by Twisted, as before the switch
    write_through(pair.tcp)
    pair.tcp.write(b"second")
    assert pair.waiting_to_write() and pair.nothing_arrived()
    pair.tcp.doWrite()
    assert receive(pair.peer, 12) == b"first second"


def test_what_the_kernel_does_not_take_is_held_and_sent_in_order(pair):
    write_through(pair.tcp)
    big = bytes(range(256)) * 40_000  # 10 MB: more than any socket buffer holds
    pair.tcp.write(big)
    pair.tcp.write(b"after")
    assert pair.waiting_to_write()
    received = bytearray()
    while len(received) < len(big) + 5:
        received += pair.peer.recv(1 << 20)
        if pair.waiting_to_write():
            pair.tcp.doWrite()
    assert bytes(received) == big + b"after"


def test_nothing_is_written_after_the_connection_is_closing(pair):
    write_through(pair.tcp)
    pair.tcp.loseConnection()
    pair.tcp.write(b"late")
    assert pair.nothing_arrived()


# --- Over Twisted's TLS -----------------------------------------------------------------------


@implementer(IHandshakeListener)
class TLSEndpoint(Protocol):
    """What the TLS layer carries; it notes when the server side's handshake is done."""

    handshake_done = False

    def handshakeCompleted(self) -> None:
        self.handshake_done = True


def pump(pair: Pair) -> None:
    """One turn of a reactor, by hand: read what arrived, write what Twisted holds."""
    pair.tcp.doRead()
    if pair.waiting_to_write():
        pair.tcp.doWrite()


def tls_pair(dev_certs) -> tuple[Pair, ssl.SSLSocket]:
    """Twisted's TLS with the project's options on one end, Python's ssl on the other."""
    options = server_tls_options(dev_certs.cert, dev_certs.key)
    clock = MemoryReactorClock()
    factory = TLSMemoryBIOFactory(options, False, Factory.forProtocol(TLSEndpoint), clock=clock)
    # One clock for the TLS layer's callLater(0) and the TCP layer's writability watch.
    pair = Pair(factory.buildProtocol(PEER), clock)
    client_context = ssl.create_default_context(cafile=str(dev_certs.ca_cert))
    client: list[ssl.SSLSocket] = []

    def handshake() -> None:
        client.append(client_context.wrap_socket(pair.peer, server_hostname="localhost"))

    thread = threading.Thread(target=handshake)
    thread.start()
    while thread.is_alive() or (client and not pair.tcp.protocol.wrappedProtocol.handshake_done):
        pump(pair)
        thread.join(0.01)
    while pair.waiting_to_write():  # the session tickets that follow the handshake
        pump(pair)
    assert client, "the TLS handshake failed"
    client[0].settimeout(5)
    return pair, client[0]


@pytest.fixture
def tls(dev_certs) -> Iterator[tuple[Pair, ssl.SSLSocket]]:
    pair, client = tls_pair(dev_certs)
    yield pair, client
    client.close()
    pair.close()


def test_over_tls_a_frame_is_encrypted_and_sent_at_once(tls):
    pair, client = tls
    transport = pair.tcp.protocol
    assert write_through(transport) == {"tls", "tcp"}  # both layers, with the pinned Twisted
    transport.write(b"frame")
    assert not pair.reactor.getDelayedCalls() and not pair.waiting_to_write()
    assert client.recv(5) == b"frame"
    transport.writeSequence([b"one ", b"two"])
    assert receive(client, 7) == b"one two"


def test_over_tls_without_it_twisted_encrypts_in_the_next_iteration(tls):
    pair, client = tls
    pair.tcp.protocol.write(b"frame")
    assert len(pair.reactor.getDelayedCalls()) == 1  # the aggregator's callLater(0)
    pair.reactor.advance(0)
    assert pair.waiting_to_write()
    pair.tcp.doWrite()
    assert client.recv(5) == b"frame"


def test_over_tls_what_was_collected_before_the_switch_goes_first(tls):
    pair, client = tls
    transport = pair.tcp.protocol
    transport.write(b"collected ")  # waits for the aggregator's next iteration
    write_through(transport)
    transport.write(b"then this")
    assert not pair.waiting_to_write()  # (the aggregator's callLater(0) will find it empty)
    assert receive(client, 19) == b"collected then this"


# --- End to end ------------------------------------------------------------------------------


def test_a_real_daphne_says_its_wss_sockets_write_through(daphne_tls, client_tls):
    url = f"wss://localhost:{daphne_tls.port}/ws/"

    async def scenario():
        async with ws_connect(url, client_tls) as socket_:
            return await receive_json(socket_)

    assert asyncio.run(scenario())["type"] == "welcome"
    log = daphne_tls.log()
    assert log.count("WebSocket writes over TLS go straight to the socket.") == 1
    assert "keep Twisted's buffering" not in log
