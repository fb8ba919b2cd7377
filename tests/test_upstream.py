"""The contract with upstream internals (realtime/upstream/): the pinned versions, and that
every private attribute and undocumented behaviour relied on is there and does what realtime
expects. Also the undocumented hooks of Twisted's, daphne's and Channels' classes that realtime
subclasses (RealtimeServer, the WebSocket protocol, the HTTP channel, the consumer, the origin
validator, runserver), with their signatures. An upgrade that changes any of them fails here,
by name."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import socket
import subprocess
import sys
import textwrap
import time
import types
import zlib
from importlib.metadata import version

import pytest
from asgiref.sync import async_to_sync
from autobahn.exception import PayloadCorruptError
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflate
from channels.consumer import AsyncConsumer, get_handler_name
from daphne.cli import CommandLineInterface
from daphne.management.commands.runserver import Command as DaphneRunserver
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.web.http import HTTPChannel

from realtime import upstream
from realtime.server.compression import negotiator
from realtime.upstream import (
    PINNED,
    TCP_STATE,
    MessageAtATimeDeflate,
    clear_option,
    compression_of,
    handler_name,
    hold_no_state_between_messages,
    limit_write_buffer,
    send_when_idle,
    set_key_exchange_groups,
    unsent_bytes,
    use_server_class_under_plain_daphne,
    with_factory_options,
    write_frame,
)


@pytest.mark.parametrize("package", sorted(PINNED))
def test_the_versions_relied_on_are_the_pinned_ones(package):
    assert version(package) == PINNED[package]


def test_the_pins_match_the_lock_file():
    from tests.helpers import ROOT

    lock = (ROOT / "requirements.lock").read_text().lower()
    for package, pinned in PINNED.items():
        assert f"{package.lower()}=={pinned}" in lock, package


# --- autobahn: write_frame, compression_of, MessageAtATimeDeflate --------------------------


def open_protocol(compression=None):
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol  # as daphne's factory does, a Twisted protocol
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.state = protocol.STATE_OPEN
    protocol._perMessageCompress = compression
    return factory, protocol


def negotiated_deflate():
    """What autobahn builds when a server accepts an offer without context takeover."""
    return PerMessageDeflate(True, True, True, 15, 15, 8)


def test_an_open_socket_has_no_compression_and_an_empty_send_queue():
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    assert compression_of(protocol) is None
    assert len(protocol.send_queue) == 0


def test_write_frame_writes_what_send_prepared_message_writes():
    factory, ours = open_protocol()
    _, theirs = open_protocol()
    prepared = factory.prepareMessage('{"type": "broadcast", "message": "é"}'.encode())
    write_frame(ours, prepared.payloadHybi)
    theirs.sendPreparedMessage(prepared)
    assert ours.transport.value() == theirs.transport.value() == prepared.payloadHybi


def test_write_frame_keeps_the_order_behind_autobahns_queue():
    _, protocol = open_protocol()
    protocol.send_queue.append((b"queued", None))
    calls = []
    protocol.sendData = calls.append
    write_frame(protocol, b"frame")
    assert calls == [b"frame"]
    assert protocol.transport.value() == b""


def test_compression_of_is_the_negotiated_extension():
    deflate = negotiated_deflate()
    _, protocol = open_protocol(deflate)
    assert compression_of(protocol) is deflate


def test_per_message_deflate_keeps_its_zlib_state_in_private_attributes():
    deflate = negotiated_deflate()
    deflate.start_compress_message()
    deflate.start_decompress_message()
    assert deflate._compressor is not None and deflate._decompressor is not None


def test_a_socket_holds_no_zlib_state_between_messages_either_way():
    _, protocol = open_protocol(negotiated_deflate())
    assert hold_no_state_between_messages(protocol)
    extension = compression_of(protocol)
    assert isinstance(extension, MessageAtATimeDeflate)
    protocol.sendMessage(b'{"text": "' + b"order " * 100 + b'"}')
    assert extension._compressor is None
    assert protocol.transport.value()[:1] == b"\xc1"  # FIN, RSV1 (compressed), text
    extension.start_decompress_message()
    compressor = zlib.compressobj(-1, zlib.DEFLATED, -15)
    data = compressor.compress(b"hello " * 50) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert extension.decompress_message_data(data[:-4]) == b"hello " * 50
    extension.end_decompress_message()
    assert extension._decompressor is None


def test_a_socket_without_compression_stays_so():
    _, protocol = open_protocol()
    assert not hold_no_state_between_messages(protocol)
    assert compression_of(protocol) is None


def test_send_close_frame_takes_any_code_and_a_reason():
    """closing.py and RealtimeServer.close_websockets send 1001/1008/1013 with it."""
    _, protocol = open_protocol()
    protocol.sendCloseFrame(code=1013, reasonUtf8=b"later")
    assert protocol.transport.value() == b"\x88\x07\x03\xf5later"


# --- Twisted's TCP transport: send_when_idle ------------------------------------------------


def test_a_real_tcp_transport_has_the_buffer_state_send_when_idle_reads():
    ours, peer = socket.socketpair()
    try:
        ours.setblocking(False)
        port = types.SimpleNamespace(_realPortNumber=8443)
        transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), port, 1, MemoryReactorClock())
        assert all(hasattr(transport, name) for name in TCP_STATE)
        assert transport._tempDataBuffer == [] and transport._writeDisconnected is False
        assert len(transport.dataBuffer) == transport.offset == 0
        assert send_when_idle(transport)
        transport.write(b"at once")
        assert peer.recv(7) == b"at once"
    finally:
        ours.close()
        peer.close()


def test_unsent_bytes_counts_what_a_real_tcp_transport_holds_back():
    ours, peer = socket.socketpair()
    try:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        port = types.SimpleNamespace(_realPortNumber=8443)
        transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), port, 1, MemoryReactorClock())
        assert unsent_bytes(transport) == 0
        transport.write(b"x" * 100_000)  # the peer reads nothing: Twisted keeps it all
        assert unsent_bytes(transport) == 100_000
        transport.doWrite()  # the kernel takes what fits in its buffer
        assert 0 < unsent_bytes(transport) < 100_000
    finally:
        ours.close()
        peer.close()
    assert unsent_bytes(StringTransport()) == 0


def test_without_that_state_the_transport_is_left_alone():
    transport = StringTransport()
    write = transport.write
    assert not send_when_idle(transport)
    assert transport.write == write


# --- Twisted's TLS factory ------------------------------------------------------------------


def test_the_tls_factory_builds_its_protocol_attribute_and_buffers_by_default():
    """WriteThroughTLSFactory only changes `protocol` (realtime/server/writethrough.py)."""
    from realtime.server.writethrough import WriteThroughTLSFactory

    assert TLSMemoryBIOFactory.protocol is BufferingTLSTransport
    options = CertificateOptions()
    built = WriteThroughTLSFactory(options, False, WebSocketServerFactory()).buildProtocol(None)
    assert type(built) is WriteThroughTLSFactory.protocol
    assert not isinstance(built, BufferingTLSTransport)


# --- pyOpenSSL and CertificateOptions -------------------------------------------------------


def test_key_exchange_groups_are_set_through_the_context_pointer():
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    assert context._context is not None
    set_key_exchange_groups(context, "X25519:prime256v1")
    with pytest.raises(ValueError, match="refused the key exchange groups NotAGroup"):
        set_key_exchange_groups(context, "NotAGroup")


def test_certificate_options_keep_their_flags_in_options_until_the_context_is_built():
    options = CertificateOptions()
    assert options._options & SSL.OP_CIPHER_SERVER_PREFERENCE
    clear_option(options, SSL.OP_CIPHER_SERVER_PREFERENCE)
    context = options.getContext()
    assert not context.set_options(0) & SSL.OP_CIPHER_SERVER_PREFERENCE  # (returns them all)


# --- daphne ---------------------------------------------------------------------------------


def in_order(source: str, *parts: str) -> bool:
    positions = [source.find(part) for part in parts]
    return -1 not in positions and positions == sorted(positions)


def test_daphne_cli_loads_the_application_before_it_builds_its_server_class():
    """use_server_class_under_plain_daphne relies on this order."""
    assert issubclass(CommandLineInterface.server_class, Server)  # (switched, in this process)
    run = inspect.getsource(CommandLineInterface.run)
    assert in_order(run, "self.load_asgi_app(", "self.server_class(")


def test_plain_daphne_is_switched_once_and_realtime_daphne_never(monkeypatch):
    from realtime.server.daphne_server import RealtimeServer

    monkeypatch.setattr(CommandLineInterface, "server_class", Server)
    monkeypatch.setitem(sys.modules, "realtime.server.cli", types.ModuleType("x"))
    assert not use_server_class_under_plain_daphne(RealtimeServer, ours="realtime.server.cli")
    assert issubclass(CommandLineInterface.server_class, Server)  # (switched, in this process)
    monkeypatch.delitem(sys.modules, "realtime.server.cli")
    assert use_server_class_under_plain_daphne(RealtimeServer, ours="realtime.server.cli")
    assert CommandLineInterface.server_class is RealtimeServer
    assert not use_server_class_under_plain_daphne(RealtimeServer, ours="realtime.server.cli")


def test_daphne_server_builds_its_factories_before_it_calls_ready_callable():
    """RealtimeServer configures ws_factory and http_factory from ready_callable."""
    run = inspect.getsource(Server.run)
    assert in_order(
        run,
        "self.connections = {}",
        "self.http_factory = HTTPFactory(self)",
        "self.ws_factory = WebSocketFactory(",
        "reactor.callLater(2, self.timeout_checker)",
        "self.ready_callable()",
        "reactor.run(",
    )


def test_daphne_server_has_the_settings_and_hooks_realtime_server_overrides():
    server = Server(application=None, endpoints=["tcp:0"])
    for name in (
        "websocket_max_message_size",
        "websocket_max_frame_size",
        "websocket_handshake_timeout",
        "websocket_connect_timeout",
        "ping_interval",
        "websocket_timeout",
        "ready_callable",
    ):
        assert hasattr(server, name), name
    for name in ("protocol_connected", "timeout_checker", "create_application"):
        assert callable(getattr(Server, name)), name


def test_daphne_websocket_protocol_has_what_the_timeout_sweep_and_close_codes_use():
    for name in ("check_timeouts", "handle_reply", "onOpen", "sendCloseFrame"):
        assert callable(getattr(WebSocketProtocol, name)), name
    source = inspect.getsource(WebSocketProtocol)
    assert "self.last_ping = time.time()" in source
    assert "self.socket_opened = time.time()" in source


def test_daphne_runserver_builds_the_class_in_server_cls():
    assert DaphneRunserver.server_cls is Server
    assert "self.server_cls(" in inspect.getsource(DaphneRunserver.inner_run)


# --- Twisted's HTTP channel (realtime/server/request_deadline.py) ---------------------------


def test_http_channel_has_the_hooks_the_request_deadline_uses():
    hooks = ("allHeadersReceived", "connectionMade", "connectionLost", "callLater")
    for name in (*hooks, "lineReceived", "lineLengthExceeded"):
        assert hasattr(HTTPChannel, name), name


def test_http_channel_refuses_headers_past_total_headers_size_as_the_size_metric_counts():
    """The "size" refusals (realtime/server/prometheus.py) are counted where the header bytes of
    a request pass `totalHeadersSize`, the bound Twisted's channel answers 400 at."""
    assert HTTPChannel.totalHeadersSize == 16384
    source = inspect.getsource(HTTPChannel.lineReceived)
    assert "self._receivedHeaderSize += len(line)" in source
    assert "self._receivedHeaderSize > self.totalHeadersSize" in source


# --- channels -------------------------------------------------------------------------------


def test_handlers_are_named_as_channels_names_them():
    assert handler_name({"type": "websocket.receive"}) == "websocket_receive"
    with pytest.raises(ValueError):
        handler_name({"type": "_private.thing"})
    assert upstream.handler_name is get_handler_name


def test_channels_consumers_send_through_base_send():
    """RealtimeConsumer's own __call__ sets base_send, as AsyncConsumer.__call__ does."""
    assert "self.base_send(" in inspect.getsource(AsyncConsumer.send)
    assert "self.base_send =" in inspect.getsource(AsyncConsumer.__call__)


def test_a_transport_pauses_its_streaming_producer_past_the_buffer_size_it_is_given():
    """What realtime/server/unsent.py relies on: FileDescriptor.write compares what waits
    unsent with `bufferSize` and pauses a registered streaming producer past it."""
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.testing import MemoryReactor

    class Producer:
        paused = 0

        def pauseProducing(self):
            self.paused += 1

        def resumeProducing(self):
            pass

        def stopProducing(self):
            pass

    transport = FileDescriptor(reactor=MemoryReactor())
    transport.connected = True
    producer = Producer()
    transport.registerProducer(producer, True)
    limit_write_buffer(transport, 100)
    transport.write(b"x" * 100)
    assert producer.paused == 0
    transport.write(b"x")
    assert producer.paused == 1
    with pytest.raises(TypeError, match="has no bufferSize"):
        limit_write_buffer(object(), 100)


def test_daphnes_action_logger_is_what_the_access_log_replaces():
    """realtime/server/access_log.py: daphne's CLI gives Server an action_logger (its default,
    at verbosity 1, an AccessLogGenerator on stdout), which Server.log_action calls as
    (protocol, action, details)."""
    from daphne.access import AccessLogGenerator

    from realtime.server.access_log import writes_to_stdout

    assert "action_logger" in inspect.signature(Server.__init__).parameters
    assert list(inspect.signature(Server.log_action).parameters) == [
        "self", "protocol", "action", "details",
    ]  # fmt: skip
    assert writes_to_stdout(AccessLogGenerator(sys.stdout))
    assert not writes_to_stdout(AccessLogGenerator(sys.stderr))
    cli_source = inspect.getsource(CommandLineInterface.run)
    assert "access_log_stream = sys.stdout" in cli_source


# --- autobahn: with_factory_options ----------------------------------------------------------


def test_with_factory_options_a_connection_copies_and_formats_nothing():
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(maxMessagePayloadSize=1234, autoPingInterval=7)
    factory.protocol = with_factory_options(WebSocketServerProtocol, factory)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    copied = set(WebSocketServerProtocol.CONFIG_ATTRS) & set(vars(protocol))
    assert not copied
    assert (protocol.maxMessagePayloadSize, protocol.autoPingInterval) == (1234, 7)
    for name in WebSocketServerProtocol.CONFIG_ATTRS:
        assert getattr(protocol, name) == getattr(factory, name), name


def test_with_factory_options_keeps_a_function_option_unbound():
    """perMessageCompressionAccept is a lambda taking the offers when compression is off."""
    factory = WebSocketServerFactory()
    factory.protocol = protocol_class = with_factory_options(WebSocketServerProtocol, factory)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    assert protocol_class.perMessageCompressionAccept(["offer"]) is None
    assert protocol.perMessageCompressionAccept(["offer"]) is None


def test_with_factory_options_keeps_every_callable_option_as_the_factory_has_it():
    """A functools.partial (realtime's perMessageCompressionAccept) binds to an instance from
    Python 3.14: every callable goes on the class as a staticmethod."""
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(perMessageCompressionAccept=negotiator(1024))
    protocol_class = with_factory_options(WebSocketServerProtocol, factory)
    assert isinstance(vars(protocol_class)["perMessageCompressionAccept"], staticmethod)
    factory.protocol = protocol_class
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    assert protocol.perMessageCompressionAccept([]) is None  # no offer: no compression


def test_corrupt_data_leaves_the_decompressor_for_autobahn_to_fail_the_socket():
    """autobahn may pass more of the frame to the extension after a failed end: it must not
    meet a None decompressor (an AttributeError out of dataReceived)."""
    _, protocol = open_protocol(negotiated_deflate())
    hold_no_state_between_messages(protocol)
    extension = compression_of(protocol)
    extension.start_decompress_message()
    extension.decompress_message_data(b"\x04")
    with pytest.raises(PayloadCorruptError):
        extension.end_decompress_message()
    assert extension._decompressor is not None


def test_autobahn_copies_what_the_class_lacks_and_only_that():
    """What with_factory_options rests on: `_connectionMade` sets an option on the instance
    only where `hasattr` finds none, for the names in CONFIG_ATTRS."""
    from autobahn.websocket import protocol as autobahn_protocol

    source = inspect.getsource(autobahn_protocol.WebSocketProtocol._connectionMade)
    assert "for configAttr in self.CONFIG_ATTRS:" in source
    assert "if not hasattr(self, configAttr):" in source


# --- daphne's logged client address (realtime/server/daphne_server.py) ------------------------


def test_daphne_logs_and_scopes_the_client_from_client_addr_set_before_the_application():
    """set_logged_client: daphne computes `client_addr` before create_application, and reads
    it again for its access log (HTTP `complete`, WebSocket events) afterwards."""
    from daphne.http_protocol import WebRequest

    http_source = inspect.getsource(WebRequest)
    ws_source = inspect.getsource(WebSocketProtocol)
    for source in (http_source, ws_source):
        assert "self.client_addr = [" in source
        assert source.index("self.client_addr = [") < source.index("create_application")
        assert '"client": self.client_addr' in source
    assert "tuple(self.client_addr)" in http_source
    assert "tuple(self.client_addr)" in ws_source
    protocol = types.SimpleNamespace(client_addr=["10.0.0.1", 5])
    upstream.set_logged_client(protocol, ["203.0.113.9", 0])
    assert protocol.client_addr == ["203.0.113.9", 0]


# --- Twisted's PROXY protocol wrapper (realtime/server/proxy_protocol.py) ---------------------


def test_twisted_reads_a_proxy_v2_header_and_hands_on_only_what_follows_it():
    """The wrapper classes realtime.upstream names: getPeer() is the header's source once it is
    read (`_proxyInfo` set, what proxy_header_read looks at); what follows reaches the wrapped
    protocol unchanged; data that is no header closes the connection."""
    from twisted.internet.address import IPv4Address

    from tests.test_client_address import proxy_v2_header

    received = []

    class Recorder(Protocol):
        def dataReceived(self, data):
            received.append((self.transport.getPeer().host, data))

    factory = upstream.ProxyHeaderFactory(types.SimpleNamespace(buildProtocol=lambda a: Recorder()))
    wrapper = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 5))
    assert isinstance(wrapper, upstream.ProxyHeaderWrapper)
    wrapper.makeConnection(StringTransport())
    assert not upstream.proxy_header_read(wrapper)
    wrapper.dataReceived(proxy_v2_header("198.51.100.3") + b"\x16hello")
    assert upstream.proxy_header_read(wrapper)
    assert received == [("198.51.100.3", b"\x16hello")]
    refused = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 5))
    transport = StringTransport()
    refused.makeConnection(transport)
    refused.dataReceived(b"\x16\x03\x01 a TLS ClientHello, no header")
    assert transport.disconnecting and not upstream.proxy_header_read(refused)


# --- the package: every name, and no Django for the server floor ------------------------------


def test_the_server_floor_gets_realtime_upstream_without_django():
    """django_side (Channels, daphne's runserver) is imported at the first use of its names."""
    code = (
        "import sys, realtime.upstream, realtime.server.daphne_server\n"
        "assert 'django' not in sys.modules, 'django imported'\n"
        "assert realtime.upstream.handler_name({'type': 'a.b'}) == 'a_b'\n"
        "assert 'django' in sys.modules\n"
    )
    assert_runs_in_a_fresh_interpreter(code)


def assert_runs_in_a_fresh_interpreter(code: str) -> None:
    from tests.helpers import ROOT

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_only_the_server_imports_daphnes_server_which_installs_its_reactor():
    """realtime.upstream, the Twisted plugin and the app's modules leave Twisted's reactor
    alone; realtime.server.daphne_server imports daphne's Server before any reactor."""
    assert_runs_in_a_fresh_interpreter(
        "import sys, realtime.upstream, realtime.server.endpoints, realtime.server.compression\n"
        "import twisted.plugins.realtime_endpoints\n"
        "assert 'daphne.server' not in sys.modules, 'daphne.server imported'\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'a reactor installed'\n"
        "import realtime.server.daphne_server\n"
        "from twisted.internet import asyncioreactor, reactor\n"
        "assert isinstance(reactor, asyncioreactor.AsyncioSelectorReactor), reactor\n"
        "assert realtime.upstream.Server is sys.modules['daphne.server'].Server\n"
    )


def test_every_name_of_realtime_upstream_is_there():
    for name in upstream.__all__:
        assert getattr(upstream, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        upstream.nothing  # noqa: B018


def test_no_module_outside_upstream_reaches_into_sys_modules_or_a_private_module():
    """The rule the package exists for, where a search can tell: `sys.modules` tricks and
    imports from upstream's private modules (`package._module`) stay in realtime/upstream."""
    from tests.helpers import ROOT

    private_import = re.compile(r"^\s*(from|import) [\w.]*\._\w+", re.MULTILINE)
    for path in (ROOT / "realtime").rglob("*.py"):
        if "upstream" in path.relative_to(ROOT / "realtime").parts:
            continue
        source = path.read_text()
        assert "sys.modules" not in source, path
        assert not private_import.search(source), path


# --- daphne's WebSocketProtocol and autobahn's (realtime/upstream/websocket_protocol.py) ----------


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_websocket_protocol_is_daphnes_with_the_hooks_realtime_overrides():
    from realtime.server.closing import AppCloseWebSocketProtocol
    from realtime.server.compression import CompressionWebSocketProtocol

    assert upstream.WebSocketProtocol is WebSocketProtocol
    assert issubclass(WebSocketProtocol, WebSocketServerProtocol)
    expected = {
        "handle_reply": ["self", "message"],
        "sendMessage": ["self", "payload", "isBinary", "fragmentSize", "sync", "doNotCompress"],
        "sendCloseFrame": ["self", "code", "reasonUtf8", "isReply"],
        "check_timeouts": ["self"],
    }
    assert set(upstream.WEBSOCKET_PROTOCOL_HOOKS) == set(expected)
    for name, names in expected.items():
        assert parameters(getattr(WebSocketProtocol, name)) == names, name
    ours = {
        "handle_reply": AppCloseWebSocketProtocol.handle_reply,
        "sendMessage": CompressionWebSocketProtocol.sendMessage,
    }
    for name, method in ours.items():
        assert parameters(method) == expected[name], name


def test_daphnes_server_hands_each_reply_to_the_protocols_handle_reply():
    """closing.py sees every ASGI message the application sends to its socket there."""
    received = []

    class Protocol:
        def handle_reply(self, message):
            received.append(message)

    protocol = Protocol()
    server = Server(application=None, endpoints=["tcp:0"])
    server.connections = {protocol: {}}
    message = {"type": "websocket.close", "code": 1013, "reason": "later"}
    asyncio.run(server.handle_reply(protocol, message))
    assert received == [message]


def test_encode_truncate_cuts_utf8_at_a_character_boundary():
    assert upstream.encode_truncate("é" * 100, 123) == "é".encode() * 61
    assert upstream.encode_truncate("bye", 123) == b"bye"


class RecordingWebSocket(WebSocketProtocol):
    """daphne's protocol with no transport: it records the ping or close daphne sends."""

    def __init__(self, opened_ago: float, pinged_ago: float, timeout: float) -> None:
        self.server = types.SimpleNamespace(
            websocket_timeout=timeout, websocket_connect_timeout=5, ping_interval=20.0
        )
        self.state = self.STATE_OPEN
        now = time.time()
        self.socket_opened, self.last_ping = now - opened_ago, now - pinged_ago
        self.sent: list[str] = []

    def _sendAutoPing(self) -> None:
        self.sent.append("ping")

    def serverClose(self, code: int | None = None) -> None:
        self.sent.append("close")


@pytest.mark.parametrize(
    ("opened_ago", "pinged_ago", "timeout", "sent"),
    [
        (30.0, 10.0, -1, []),  # the next ping in 10 s
        (30.0, 21.0, -1, ["ping"]),  # past ping_interval since the last ping
        (30.0, 10.0, 25.0, ["close"]),  # open longer than websocket_timeout
        (30.0, 10.0, 40.0, []),
    ],
)
def test_daphne_checks_an_open_socket_when_next_check_due_says(
    opened_ago, pinged_ago, timeout, sent
):
    """next_check_due reads `last_ping` and `socket_opened` as daphne's check_timeouts() does:
    it finds something to do exactly when that time has passed."""
    protocol = RecordingWebSocket(opened_ago, pinged_ago, timeout)
    due = upstream.next_check_due(protocol, 20.0, timeout)
    assert (due < time.time()) == bool(sent)
    protocol.check_timeouts()
    assert protocol.sent == sent
    if sent == ["ping"]:  # daphne stamps the ping: the next is ping_interval away
        assert upstream.next_check_due(protocol, 20.0, timeout) > time.time() + 19


def test_daphne_stamps_last_ping_at_connect_and_at_each_message():
    for method, stamps in (("onConnect", 2), ("onMessage", 1)):
        source = inspect.getsource(getattr(WebSocketProtocol, method))
        assert source.count("= time.time()") == stamps, method
        assert "self.last_ping = time.time()" in source, method
    assert "self.socket_opened = time.time()" in inspect.getsource(WebSocketProtocol.onConnect)


# --- daphne's Server (realtime/upstream/daphne_hooks.py) ------------------------------------------


def test_realtime_server_overrides_daphnes_hooks_with_their_signatures():
    from realtime.server.daphne_server import RealtimeServer

    assert upstream.Server is Server and issubclass(RealtimeServer, Server)
    expected = {
        "protocol_connected": ["self", "protocol"],
        "timeout_checker": ["self"],
        "create_application": ["self", "protocol", "scope"],
    }
    assert set(upstream.SERVER_HOOKS) == set(expected)
    for name, names in expected.items():
        assert parameters(getattr(Server, name)) == names, name
        assert parameters(getattr(RealtimeServer, name)) == names, name


def test_daphnes_sweep_checks_every_connection_every_two_seconds():
    source = inspect.getsource(Server.timeout_checker)
    assert "for protocol in list(self.connections.keys()):" in source
    assert "protocol.check_timeouts()" in source
    assert "reactor.callLater(2, self.timeout_checker)" in source
    assert upstream.TIMEOUT_SWEEP_INTERVAL == 2.0
    assert "reactor.callLater(2, self.timeout_checker)" in inspect.getsource(Server.run)


def test_call_before_serving_runs_first_then_the_ready_callable_given():
    calls = []
    server = Server(application=None, endpoints=["tcp:0"], ready_callable=lambda: calls.append(2))
    upstream.call_before_serving(server, lambda: calls.append(1))
    server.ready_callable()
    assert calls == [1, 2]
    alone = Server(application=None, endpoints=["tcp:0"])
    upstream.call_before_serving(alone, lambda: calls.append(3))
    alone.ready_callable()
    assert calls == [1, 2, 3]
    assert "if self.ready_callable:" in inspect.getsource(Server.run)


def test_replace_protocols_makes_daphnes_factories_build_them():
    """As Server.run() builds them: HTTPFactory takes any callable as its protocol, and puts
    its reactor's callLater on what it builds (the request deadline's timer)."""
    from daphne.http_protocol import HTTPFactory
    from daphne.ws_protocol import WebSocketFactory

    from realtime.server.request_deadline import DeadlineHTTPChannel, channel_with_deadline

    server = Server(application=None, endpoints=["tcp:0"])
    server.http_factory = HTTPFactory(server)
    server.ws_factory = WebSocketFactory(server, server="Daphne")
    ws_class = type("Ours", (WebSocketProtocol,), {})
    upstream.replace_protocols(server, ws=ws_class, http=channel_with_deadline(3.0))
    assert isinstance(server.ws_factory.buildProtocol(None), ws_class)
    channel = server.http_factory.buildProtocol(None)
    assert isinstance(channel, DeadlineHTTPChannel) and channel.first_request_timeout == 3.0
    assert channel.callLater == server.http_factory.reactor.callLater
    upstream.replace_protocols(server, ws=WebSocketProtocol)  # http None: left as it is
    assert isinstance(server.http_factory.buildProtocol(None), DeadlineHTTPChannel)


def test_the_access_log_stream_is_the_generators():
    from daphne.access import AccessLogGenerator

    assert upstream.access_log_stream(AccessLogGenerator(sys.stderr)) is sys.stderr


def test_only_daphnes_command_line_imports_daphne_cli(monkeypatch):
    """started_by_daphne_cli: daphne's server, protocols and runserver never import it."""
    code = (
        "import sys, daphne.server, daphne.ws_protocol, daphne.http_protocol, daphne.access\n"
        "from realtime.upstream import started_by_daphne_cli\n"
        "assert not started_by_daphne_cli()\n"
        "import daphne.cli\n"
        "assert started_by_daphne_cli()\n"
    )
    assert_runs_in_a_fresh_interpreter(code)


# --- Twisted's HTTPChannel (realtime/upstream/http_channel.py) --------------------------------


def test_the_request_deadline_overrides_twisteds_channel_with_its_signatures():
    from realtime.server.request_deadline import DeadlineHTTPChannel

    assert upstream.HTTPChannel is HTTPChannel and issubclass(DeadlineHTTPChannel, HTTPChannel)
    for name in upstream.HTTP_CHANNEL_HOOKS:
        assert name in vars(DeadlineHTTPChannel), name
        assert parameters(getattr(DeadlineHTTPChannel, name)) == parameters(
            getattr(HTTPChannel, name)
        ), name
    for name in upstream.HTTP_CHANNEL_ATTRIBUTES:
        assert hasattr(HTTPChannel(), name), name


class RecordingChannel(HTTPChannel):
    """Twisted's channel recording the hooks DeadlineHTTPChannel overrides, as called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def lineReceived(self, line):
        self.calls.append(("line", line))
        return super().lineReceived(line)

    def allHeadersReceived(self):
        super().allHeadersReceived()
        self.calls.append(("headers", self.length))

    def allContentReceived(self):
        self.calls.append(("content",))
        super().allContentReceived()

    def requestDone(self, request):
        super().requestDone(request)
        self.calls.append(("done", len(self.requests)))


def finishing_request(channel, queued):
    from twisted.web.http import Request

    class Finished(Request):
        def process(self):
            self.finish()

    return Finished(channel, queued)


def open_channel(channel_class=RecordingChannel):
    channel = channel_class()
    channel.requestFactory = finishing_request
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def test_twisted_calls_the_channel_hooks_in_the_order_the_deadline_relies_on():
    channel, transport = open_channel()
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    channel.dataReceived(b"0\r\n\r\n")
    assert channel.calls == [
        ("line", b"POST / HTTP/1.1"),
        ("line", b"Host: x"),
        ("line", b"Content-Length: 5"),
        ("line", b""),
        ("headers", 5),
        ("content",),
        ("done", 0),
        ("line", b"GET / HTTP/1.1"),
        ("line", b"Host: x"),
        ("line", b"Transfer-Encoding: chunked"),
        ("line", b""),
        ("headers", None),  # chunked: no length
        ("content",),
        ("done", 0),
    ]
    assert transport.value().count(b"HTTP/1.1 200") == 2


def test_twisted_answers_400_where_the_header_line_sizes_pass_total_headers_size():
    """DeadlineHTTPChannel counts a "size" refusal where this count passes the bound."""
    channel, transport = open_channel(HTTPChannel)
    counted = 0
    lines = [b"GET / HTTP/1.1", *[b"X-Filler: " + b"a" * 90 for _ in range(200)]]
    for line in lines:
        counted += upstream.header_line_size(line)
        channel.dataReceived(line + b"\r\n")
        refused = transport.value().startswith(b"HTTP/1.1 400")
        assert refused == (counted > HTTPChannel.totalHeadersSize), counted
        if refused:
            break
    assert refused


def test_an_http_channel_registers_itself_as_its_transports_producer():
    """release_from_http_channel undoes that once daphne gave the connection to a WebSocket."""
    channel, transport = open_channel(HTTPChannel)
    assert transport.producer is channel and transport.streaming
    upstream.release_from_http_channel(transport)
    assert transport.producer is None


def test_daphne_hands_an_upgraded_connection_over_where_transport_owner_looks():
    from daphne.http_protocol import WebRequest
    from twisted.internet.protocol import Factory
    from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

    source = inspect.getsource(WebRequest.process)
    assert "transport.wrappedProtocol = protocol" in source
    assert "transport.protocol = protocol" in source
    channel = HTTPChannel()
    assert upstream.transport_owner(StringTransport(), channel) is channel
    other = Protocol()
    wrapper = ProtocolWrapper(WrappingFactory(Factory()), other)  # what TLS is, to daphne
    assert upstream.transport_owner(wrapper, channel) is other
    assert upstream.transport_owner(types.SimpleNamespace(protocol=other), channel) is other


# --- Channels and daphne's runserver (realtime/upstream/django_side.py) -----------------------


def test_the_consumer_overrides_channels_hooks_with_their_signatures():
    from channels.generic.websocket import AsyncWebsocketConsumer

    from realtime.websocket.consumer import RealtimeConsumer

    assert upstream.AsyncWebsocketConsumer is AsyncWebsocketConsumer
    assert issubclass(RealtimeConsumer, AsyncWebsocketConsumer)
    expected = {
        "__call__": ["self", "scope", "receive", "send"],
        "dispatch": ["self", "message"],
        "websocket_disconnect": ["self", "message"],
    }
    assert set(upstream.CONSUMER_HOOKS) == set(expected)
    for name, names in expected.items():
        assert parameters(getattr(AsyncWebsocketConsumer, name)) == names, name
        assert parameters(getattr(RealtimeConsumer, name)) == names, name


def test_a_channels_consumer_sends_through_the_base_send_it_is_given():
    sent = []

    async def record(message):
        sent.append(message)

    consumer = upstream.AsyncWebsocketConsumer()
    consumer.base_send = record
    asyncio.run(consumer.send(text_data="hello"))
    assert sent == [{"type": "websocket.send", "text": "hello"}]


@pytest.mark.django_db  # Channels closes old database connections before the app runs
def test_channels_origin_validator_decides_through_valid_origin():
    """LoggingOriginValidator overrides it: Channels' __call__ passes the parsed Origin, or
    None without one, and answers 403 (a close before accept) when it returns False."""
    from channels.security.websocket import OriginValidator

    from realtime.websocket.middleware import LoggingOriginValidator

    assert upstream.OriginValidator is OriginValidator
    assert issubclass(LoggingOriginValidator, OriginValidator)
    assert list(upstream.ORIGIN_VALIDATOR_HOOKS) == ["valid_origin"]
    assert parameters(OriginValidator.valid_origin) == ["self", "parsed_origin"]
    assert parameters(LoggingOriginValidator.valid_origin) == ["self", "parsed_origin"]
    seen, sent = [], []

    class Recording(OriginValidator):
        def valid_origin(self, parsed_origin):
            seen.append(parsed_origin and parsed_origin.netloc)
            return parsed_origin is not None

    async def app(scope, receive, send):
        sent.append("app")

    async def send(message):
        sent.append(message["type"])

    messages = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1006}]

    async def receive():
        return messages.pop(0)

    validator = async_to_sync(Recording(app, ["*"]))  # Channels' denier hops to a thread
    validator({"type": "websocket", "headers": [(b"origin", b"https://a.example")]}, receive, send)
    validator({"type": "websocket", "headers": []}, receive, send)
    assert seen == ["a.example", None]
    assert sent == ["app", "websocket.close"]


def test_daphnes_runserver_builds_server_cls_with_keywords_only():
    """runserver --tls puts a builder taking **kwargs in `server_cls`."""
    from realtime.management.commands.runserver import Command

    assert upstream.DaphneRunserverCommand is DaphneRunserver
    assert issubclass(Command, DaphneRunserver)
    assert list(upstream.RUNSERVER_HOOKS) == ["server_cls"]
    tree = ast.parse(textwrap.dedent(inspect.getsource(DaphneRunserver.inner_run)))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "server_cls"
    ]
    assert len(calls) == 1 and not calls[0].args
    assert {"application", "endpoints"} <= {keyword.arg for keyword in calls[0].keywords}
