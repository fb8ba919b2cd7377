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
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

from realtime.server.endpoints import reuseport_endpoint, server_tls_options
from realtime.server.writethrough import WriteThroughTLSFactory, write_through
from tests.helpers import REALTIME_DAPHNE, free_port, receive_json, ws_connect

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


def tls_pair(dev_certs, factory_class: type[TLSMemoryBIOFactory]) -> tuple[Pair, ssl.SSLSocket]:
    """Twisted's TLS with the project's options on one end, Python's ssl on the other."""
    options = server_tls_options(dev_certs.cert, dev_certs.key)
    clock = MemoryReactorClock()
    factory = factory_class(options, False, Factory.forProtocol(TLSEndpoint), clock=clock)
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


def tls_fixture(factory_class: type[TLSMemoryBIOFactory]):
    @pytest.fixture
    def fixture(dev_certs) -> Iterator[tuple[Pair, ssl.SSLSocket]]:
        pair, client = tls_pair(dev_certs, factory_class)
        yield pair, client
        client.close()
        pair.close()

    return fixture


our_tls = tls_fixture(WriteThroughTLSFactory)  # the realtime: endpoint's
twisted_tls = tls_fixture(TLSMemoryBIOFactory)  # the stock ssl: endpoint's


def test_over_our_tls_a_frame_is_encrypted_and_sent_at_once(our_tls):
    pair, client = our_tls
    transport = pair.tcp.protocol
    assert write_through(transport) == {"tls", "tcp"}  # both layers, with the pinned Twisted
    transport.write(b"frame")
    assert not pair.reactor.getDelayedCalls() and not pair.waiting_to_write()
    assert client.recv(5) == b"frame"
    transport.writeSequence([b"one ", b"two"])
    assert receive(client, 7) == b"one two"


def test_over_twisteds_tls_a_frame_waits_for_the_next_iteration(twisted_tls):
    pair, client = twisted_tls
    transport = pair.tcp.protocol
    assert isinstance(transport, BufferingTLSTransport)
    assert write_through(transport) == {"tcp"}
    transport.write(b"frame")
    assert len(pair.reactor.getDelayedCalls()) == 1  # the aggregator's callLater(0)
    pair.reactor.advance(0)  # then the TCP layer writes through: no wait for writability
    assert not pair.waiting_to_write()
    assert client.recv(5) == b"frame"


# --- End to end ------------------------------------------------------------------------------


def welcome_from(port: int, client_tls: ssl.SSLContext) -> dict:
    async def scenario():
        async with ws_connect(f"wss://localhost:{port}/ws/", client_tls) as socket_:
            return await receive_json(socket_)

    return asyncio.run(scenario())


def test_realtime_daphne_on_the_realtime_endpoint_writes_wss_through(start, dev_certs, client_tls):
    port = free_port()
    endpoint = reuseport_endpoint(port, dev_certs.cert, dev_certs.key, "127.0.0.1")
    server = start([*REALTIME_DAPHNE, "-e", endpoint, "project.asgi:application"], port)
    assert welcome_from(port, client_tls)["type"] == "welcome"
    log = server.log()
    assert log.count("WebSocket writes over TLS go straight to the socket.") == 1
    assert "keep Twisted's buffering" not in log and "Started by plain" not in log


def test_on_the_stock_ssl_endpoint_tls_writes_are_collected_and_it_says_so(daphne_tls, client_tls):
    assert welcome_from(daphne_tls.port, client_tls)["type"] == "welcome"
    log = daphne_tls.log()
    assert log.count("WebSocket writes over TLS are collected for one reactor iteration") == 1
    assert "keep Twisted's buffering" not in log
