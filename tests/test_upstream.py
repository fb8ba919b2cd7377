"""The contract with upstream internals (realtime/server/upstream.py): the pinned versions,
and that the attributes and behaviour relied on are there and do what autobahn's public call
does. An upgrade that changes them fails here."""

from __future__ import annotations

from importlib.metadata import version

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport

from realtime.server.upstream import AUTOBAHN_VERSION, write_prepared


def open_protocol():
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol  # as daphne's factory does, a Twisted protocol
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.state = protocol.STATE_OPEN
    return factory, protocol


def test_the_versions_relied_on_are_the_pinned_ones():
    assert version("autobahn") == AUTOBAHN_VERSION


def test_an_open_socket_has_no_compression_and_an_empty_send_queue():
    _, protocol = open_protocol()
    assert protocol._perMessageCompress is None
    assert len(protocol.send_queue) == 0


def test_write_prepared_writes_what_send_prepared_message_writes():
    factory, ours = open_protocol()
    _, theirs = open_protocol()
    prepared = factory.prepareMessage('{"type": "broadcast", "message": "é"}'.encode())
    write_prepared(ours, prepared)
    theirs.sendPreparedMessage(prepared)
    assert ours.transport.value() == theirs.transport.value() == prepared.payloadHybi
    assert prepared.payloadHybi[:1] == b"\x81"  # FIN and a text frame, unmasked


def test_with_compression_negotiated_the_public_call_is_used():
    factory, protocol = open_protocol()
    prepared = factory.prepareMessage(b"x" * 100)
    calls = []
    protocol._perMessageCompress = object()
    protocol.sendPreparedMessage = calls.append
    write_prepared(protocol, prepared)
    assert calls == [prepared]
    assert protocol.transport.value() == b""
