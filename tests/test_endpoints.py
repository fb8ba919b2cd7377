"""The `realtime:` Twisted endpoint: its string builder, its parser plugin and its TLS settings.

Parsing goes through Twisted's own `serverFromString`, which finds the parser through
twisted/plugins/realtime_endpoints.py at the repository root, as daphne does; a MemoryReactor
records what the endpoint asks the reactor for. The last test runs the real daphne command.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import socket
import time
from pathlib import Path

import pytest
from cryptography import x509
from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from realtime.server.endpoints import ReusePortTLSEndpoint, reuseport_endpoint, server_tls_options
from realtime.server.writethrough import WriteThroughTLSFactory
from realtime.tls.devca import DevCertPaths
from tests.helpers import DAPHNE, ROOT, free_port, receive_json, wait_for_port, ws_connect


def test_the_builder_escapes_paths_and_adds_reuse_port():
    endpoint = reuseport_endpoint(443, Path("/etc/tls/a:b=c.pem"), Path("/etc/tls/k\\ey.pem"))
    assert endpoint == (
        "realtime:443:privateKey=/etc/tls/k\\\\ey.pem:certKey=/etc/tls/a\\:b\\=c.pem:reusePort=yes"
    )


@pytest.mark.parametrize("interface", ["::1", "[::1]"])
def test_the_builder_escapes_an_ipv6_interface(interface):
    endpoint = reuseport_endpoint(8443, "c.pem", "k.pem", interface=interface)
    assert endpoint == (
        "realtime:8443:privateKey=k.pem:certKey=c.pem:interface=\\:\\:1:reusePort=yes"
    )


@pytest.mark.parametrize("port", [-1, 65536, "8443", True])
def test_the_builder_refuses_a_bad_port(port):
    with pytest.raises(ValueError, match="port"):
        reuseport_endpoint(port, "c.pem", "k.pem")


def test_the_plugin_directory_does_not_shadow_twisted():
    import twisted
    import twisted.plugins

    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert Path(twisted.__file__).parent != ROOT / "twisted"
    assert str(ROOT / "twisted" / "plugins") in twisted.plugins.__path__


def parse(description: str) -> tuple[ReusePortTLSEndpoint, MemoryReactor]:
    reactor = MemoryReactor()
    return serverFromString(reactor, description), reactor


def test_serverfromstring_finds_the_plugin(dev_certs: DevCertPaths):
    endpoint, reactor = parse(reuseport_endpoint(8443, dev_certs.cert, dev_certs.key, "::1"))
    assert isinstance(endpoint, ReusePortTLSEndpoint)
    assert (endpoint.port, endpoint.interface, endpoint.reuse_port) == (8443, "::1", True)


def test_listen_passes_a_reuse_port_binding_and_a_write_through_tls_factory(dev_certs):
    endpoint, reactor = parse(reuseport_endpoint(0, dev_certs.cert, dev_certs.key, "127.0.0.1"))
    listening = []
    served = Factory()
    endpoint.listen(served).addCallback(listening.append)
    assert len(listening) == 1
    [(binding, tls_factory, backlog, interface)] = reactor.tcpServers
    assert isinstance(tls_factory, WriteThroughTLSFactory)
    assert tls_factory.wrappedFactory is served
    assert (backlog, interface) == (50, "127.0.0.1")
    # What tcp.Port (which listenTCP builds) makes of that Binding: both socket options set.
    port = tcp.Port(binding, Factory(), backlog, interface, reactor=reactor)
    with port.createInternetSocket() as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1


def test_reuse_port_is_off_unless_asked_for(dev_certs: DevCertPaths):
    endpoint, reactor = parse(f"realtime:0:privateKey={dev_certs.key}:certKey={dev_certs.cert}")
    endpoint.listen(Factory())
    [(binding, *_)] = reactor.tcpServers
    port = tcp.Port(binding, Factory(), reactor=reactor)
    with port.createInternetSocket() as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0


def test_reuse_port_takes_yes_or_no(dev_certs: DevCertPaths):
    description = f"realtime:0:privateKey={dev_certs.key}:certKey={dev_certs.cert}"
    with pytest.raises(ValueError, match="reusePort must be yes or no, not 'maybe'"):
        parse(description + ":reusePort=maybe")


@pytest.fixture
def every_endpoint(dev_certs: DevCertPaths) -> dict[str, str]:
    """Each realtime endpoint's string with its required options, the TCP ones left to add."""
    return {
        "realtime": f"realtime:{{}}:privateKey={dev_certs.key}:certKey={dev_certs.cert}",
        "realtime-redirect": "realtime-redirect:{}:httpsPort=8443",
        "realtime-plain": "realtime-plain:{}",
    }


@pytest.mark.parametrize("prefix", ["realtime", "realtime-redirect", "realtime-plain"])
def test_every_endpoint_reads_the_tcp_options_alike(every_endpoint, prefix):
    endpoint, reactor = parse(
        every_endpoint[prefix].format(0) + ":interface=127.0.0.1:backlog=7:reusePort=yes"
    )
    endpoint.listen(Factory())
    [(binding, _, backlog, interface)] = reactor.tcpServers
    assert (backlog, interface) == (7, "127.0.0.1")
    port = tcp.Port(binding, Factory(), reactor=reactor)
    with port.createInternetSocket() as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1


@pytest.mark.parametrize("prefix", ["realtime", "realtime-redirect", "realtime-plain"])
def test_every_endpoint_refuses_a_bad_port_or_reuse_port_in_the_same_words(every_endpoint, prefix):
    with pytest.raises(ValueError, match=f"^{prefix}: the port must be a number from 0 to 65535"):
        parse(every_endpoint[prefix].format("http"))
    with pytest.raises(ValueError, match=f"^{prefix}: reusePort must be yes or no, not 'maybe'"):
        parse(every_endpoint[prefix].format(0) + ":reusePort=maybe")


def test_the_key_and_certificate_options_are_required(dev_certs: DevCertPaths):
    with pytest.raises(ValueError, match="both privateKey=FILE and certKey=FILE are required"):
        parse(f"realtime:8443:certKey={dev_certs.cert}")


def test_a_missing_certificate_names_the_file(dev_certs: DevCertPaths, tmp_path: Path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=f"Cannot read the certificate file {missing}"):
        parse(reuseport_endpoint(8443, missing, dev_certs.key))


def test_a_missing_key_names_the_file(dev_certs: DevCertPaths, tmp_path: Path):
    missing = tmp_path / "missing-key.pem"
    with pytest.raises(ValueError, match=f"Cannot read the private key file {missing}"):
        server_tls_options(dev_certs.cert, missing)


def test_an_unreadable_key_is_named_and_never_shown(dev_certs: DevCertPaths, tmp_path: Path):
    bad = tmp_path / "bad-key.pem"
    secret = "c2VjcmV0IGtleSBtYXRlcmlhbA=="
    bad.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError) as info:
        server_tls_options(dev_certs.cert, bad)
    assert str(bad) in str(info.value)
    assert secret not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_key_of_another_certificate_is_refused(dev_certs: DevCertPaths):
    with pytest.raises(ValueError, match="does not belong to"):
        server_tls_options(dev_certs.cert, dev_certs.ca_key)


def test_the_certificate_file_may_hold_the_chain(dev_certs: DevCertPaths, tmp_path: Path):
    chain = tmp_path / "fullchain.pem"
    chain.write_bytes(dev_certs.cert.read_bytes() + dev_certs.ca_cert.read_bytes())
    options = server_tls_options(chain, dev_certs.key, extra_chain=dev_certs.ca_cert)
    assert options.certificate == x509.load_pem_x509_certificate(dev_certs.cert.read_bytes())
    assert len(options.extraCertChain) == 2
    options.getContext()  # OpenSSL accepts the certificate, key and chain


def test_plain_daphne_serves_wss_with_the_realtime_endpoint(start, dev_certs, client_tls):
    """The command in docs/deployment.md: daphne from the project root finds the plugin."""
    port = free_port()
    endpoint = reuseport_endpoint(port, dev_certs.cert, dev_certs.key, "127.0.0.1")
    server = start([DAPHNE, "-e", endpoint, "project.asgi:application"], port)

    async def scenario():
        async with ws_connect(f"wss://localhost:{port}/ws/", client_tls) as socket_:
            return await receive_json(socket_)

    welcome = asyncio.run(scenario())
    assert welcome["secure"] is True
    assert welcome["scheme"] == "wss"
    assert welcome["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert "Traceback" not in server.log()


def test_the_endpoint_serves_an_asgi_app_without_django_settings(dev_certs, client_tls, tmp_path):
    """The server floor on its own: `bench.peers.bare_echo` has no Django at all."""
    import os
    import subprocess

    port = free_port()
    endpoint = f"realtime:{port}:privateKey={dev_certs.key}:certKey={dev_certs.cert}"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["REALTIME_MAX_CONNECTIONS_PER_ADDRESS"] = "2"  # read from here without Django
    log = (tmp_path / "bare.log").open("wb")
    process = subprocess.Popen(
        [DAPHNE, "-e", endpoint, "bench.peers.bare_echo:application"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, process, 30)

        async def echo() -> str:
            async with ws_connect(f"wss://localhost:{port}/ws/", client_tls) as socket_:
                await socket_.send("hello")
                return await asyncio.wait_for(socket_.recv(), 10)

        assert asyncio.run(echo()) == "hello"
        time.sleep(0.5)  # the probe's and the echo socket's closes are seen
        kept = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        try:
            for connection in kept:
                connection.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    connection.recv(1)  # kept: waiting for its TLS handshake
            with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
                third.settimeout(2)
                with contextlib.suppress(ConnectionResetError):
                    assert third.recv(1) == b""  # past the cap of 2: closed at once
        finally:
            for connection in kept:
                connection.close()
    finally:
        process.terminate()
        process.wait(20)
        log.close()


# --- memory per idle connection: SSL_MODE_RELEASE_BUFFERS ------------------------------------


class MallocInfo(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def malloc_in_use() -> int:
    """Bytes glibc's malloc has handed out (where OpenSSL's memory comes from)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallocInfo
    return libc.mallinfo2().uordblks


def idle_connection_bytes(server_context: SSL.Context, ca: Path, count: int = 300) -> float:
    """malloc'd bytes each idle server connection keeps after a handshake and one message each
    way (the clients freed), through memory BIOs as Twisted's TLS does."""
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.load_verify_locations(str(ca))
    servers, clients = [], []
    gc.collect()
    before = malloc_in_use()
    for _ in range(count):
        server = SSL.Connection(server_context, None)
        server.set_accept_state()
        client = SSL.Connection(client_context, None)
        client.set_connect_state()
        client.set_tlsext_host_name(b"localhost")
        for _ in range(10):  # the handshake's round trips
            for side in (client, server):
                with contextlib.suppress(SSL.WantReadError):
                    side.do_handshake()
            pump(client, server)
        client.send(b"hello")
        pump(client, server)
        assert server.recv(100) == b"hello"
        server.send(b"x" * 300)
        pump(server, client)
        assert client.recv(1000) == b"x" * 300
        with contextlib.suppress(SSL.WantReadError):
            server.recv(32768)  # as Twisted reads: until there is nothing left
        servers.append(server)
        clients.append(client)
    clients.clear()
    gc.collect()
    return (malloc_in_use() - before) / count


def pump(one: SSL.Connection, other: SSL.Connection) -> None:
    """Move the bytes waiting in each connection's outgoing memory BIO to the other."""
    moved = True
    while moved:
        moved = False
        for source, target in ((one, other), (other, one)):
            with contextlib.suppress(SSL.WantReadError):
                target.bio_write(source.bio_read(65536))
                moved = True


def test_an_idle_tls_connection_keeps_no_record_buffers(dev_certs: DevCertPaths):
    """SSL_MODE_RELEASE_BUFFERS (Twisted's CertificateOptions sets it, apply_profile makes
    sure): an idle connection's OpenSSL read and write buffers, about 17 KiB each, are freed.
    Measured against the same context with the mode cleared."""
    released = server_tls_options(dev_certs.cert, dev_certs.key).getContext()
    kept = server_tls_options(dev_certs.cert, dev_certs.key).getContext()
    assert released.set_mode(0) & SSL.MODE_RELEASE_BUFFERS
    kept.clear_mode(SSL.MODE_RELEASE_BUFFERS)
    with_mode = idle_connection_bytes(released, dev_certs.ca_cert)
    without = idle_connection_bytes(kept, dev_certs.ca_cert)
    assert without - with_mode > 20 * 1024, (with_mode, without)
