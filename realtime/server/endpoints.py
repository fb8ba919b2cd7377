"""The `realtime:` Twisted endpoint: hardened TLS on a TCP port that several processes can share.

    realtime:PORT:privateKey=KEY:certKey=CERT[:interface=ADDR][:backlog=N]
             [:reusePort=yes|no][:extraCertChain=FILE][:profile=intermediate|modern]
             [:proxyProtocol=yes|no]

The stock `ssl:` endpoint, but with one of Mozilla's TLS profiles (realtime/tls/profiles.py),
the whole chain read from `certKey`, SO_REUSEPORT with `reusePort=yes` (so `serve`'s workers
share the port, adopting the sockets realtime/server/listeners.py opened), and a load balancer's
PROXY header with `proxyProtocol=yes` (realtime/server/proxy_protocol.py). `EndpointParser` reads
the TCP part once for this endpoint, `realtime-redirect:` and `realtime-plain:`. The syntax and
why: docs/tls.md ("Endpoint strings"), docs/deployment.md ("Plain daphne with the `realtime:`
endpoint", "How the workers share the port").
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from twisted.internet import defer, task
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.internet.tcp import makeBinding
from twisted.plugin import IPlugin
from zope.interface import implementer

from realtime.common.endpoint_strings import endpoint_string
from realtime.server.address_cap import AddressCap, CapByAddress, connections_per_address
from realtime.server.client_address import configured_policy
from realtime.server.listeners import inherited_listener
from realtime.server.proxy_protocol import ProxyProtocolEndpoint
from realtime.server.writethrough import WriteThroughTLSFactory
from realtime.tls.profiles import DEFAULT_PROFILE, TLSProfile, tls_profile
from realtime.upstream import clear_option, set_key_exchange_groups

PREFIX = "realtime"
YES_NO = {"yes": True, "no": False, "1": True, "0": False, "true": True, "false": False}
TWISTED_TLS_VERSIONS = {"TLSv1.2": TLSVersion.TLSv1_2, "TLSv1.3": TLSVersion.TLSv1_3}
DRAIN = 0.5  # seconds a stopping server still serves the connections it accepted last


# --- TLS context -----------------------------------------------------------------------------


def _read(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"Cannot read the {what} {path}: {exc.strerror}.") from None


def load_certificates(path: Path | str) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in file order."""
    data = _read(path, "certificate file")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path} holds no readable PEM certificate.") from None
    return certificates


def load_private_key(path: Path | str) -> PrivateKeyTypes:
    """An unencrypted PEM private key. Errors name the file, never its contents."""
    data = _read(path, "private key file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # from None: the parser's own message is not needed and could quote the input.
        raise ValueError(f"{path} holds no readable unencrypted PEM private key.") from None


def _public_der(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class ProfileCertificateOptions(CertificateOptions):
    """Twisted's CertificateOptions plus what it has no argument for: a TLS profile's groups,
    TLS 1.3 cipher suites, no renegotiation, and the client's cipher order when asked."""

    def __init__(self, *args: Any, profile: TLSProfile, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profile = profile
        self._profile_applied = False
        if not profile.server_cipher_preference:
            clear_option(self, SSL.OP_CIPHER_SERVER_PREFERENCE)  # Twisted always sets it

    def getContext(self) -> SSL.Context:
        # Twisted builds the context once and caches it; every connection calls this first,
        # so the profile is in place before the first Connection freezes the context.
        context = super().getContext()
        if not self._profile_applied:
            apply_profile(context, self.profile)
            self._profile_applied = True
        return context


def apply_profile(context: SSL.Context, profile: TLSProfile) -> None:
    """Set a profile's key exchange groups, TLS 1.3 suites and no renegotiation on a context."""
    context.set_tls13_ciphersuites(":".join(profile.tls13_ciphersuites).encode("ascii"))
    context.set_options(SSL.OP_NO_RENEGOTIATION)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    set_key_exchange_groups(context, profile.openssl_groups)


def server_tls_options(
    cert_path: Path | str,
    key_path: Path | str,
    extra_chain: Path | str | None = None,
    profile: str = DEFAULT_PROFILE,
) -> ProfileCertificateOptions:
    """The server's TLS settings: certificate, chain and key from PEM files, and a TLS profile.

    `cert_path` holds the server certificate, optionally followed by its intermediates;
    `extra_chain` adds more intermediates; `profile` is "intermediate" or "modern"
    (realtime/tls/profiles.py). Raises ValueError naming the file or the profile at fault.
    """
    chosen = tls_profile(profile, what=f"{PREFIX}: profile")
    leaf, *chain = load_certificates(cert_path)
    key = load_private_key(key_path)
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise ValueError(f"The private key {key_path} does not belong to {cert_path}.")
    if extra_chain is not None:
        chain += load_certificates(extra_chain)
    ciphers = {}
    if chosen.tls12_ciphers:
        cipher_string = ":".join(chosen.tls12_ciphers)
        ciphers["acceptableCiphers"] = AcceptableCiphers.fromOpenSSLCipherString(cipher_string)
    # cryptography objects, not pyOpenSSL's X509/PKey wrappers: pyOpenSSL 26 deprecates those,
    # and Twisted hands both kinds to the OpenSSL context unchanged.
    return ProfileCertificateOptions(
        privateKey=key,
        certificate=leaf,
        extraCertChain=chain or None,
        raiseMinimumTo=TWISTED_TLS_VERSIONS[chosen.min_version],
        lowerMaximumSecurityTo=TWISTED_TLS_VERSIONS[chosen.max_version],
        profile=chosen,
        # A server-side session cache: a returning client (TLS 1.2 session ids, TLS 1.3
        # stateful tickets) skips the full handshake, the expensive part of TLS. Stateless
        # ticket keys stay off, as in Mozilla's server configurations. The cache is per worker
        # process, so with N workers about 1 in N reconnections lands where it can resume.
        enableSessions=True,
        **ciphers,
    )


# --- Endpoint --------------------------------------------------------------------------------


class CappedTLSFactory(CapByAddress, WriteThroughTLSFactory):
    """The TLS wrapper, admitting at most `cap.limit` connections per client address."""


@dataclass(frozen=True)
class TCPOptions:
    """What every realtime endpoint string says of its TCP port: `PORT[:interface=ADDR]
    [:backlog=N][:reusePort=yes|no]`."""

    port: int
    interface: str = ""
    backlog: int = 50
    reuse_port: bool = False


@implementer(IStreamServerEndpoint)
class ReusePortTCPEndpoint:
    """Listens on a TCP port: the socket `serve`'s supervisor handed down for it, else one of
    its own, with SO_REUSEPORT when `reuse_port` is true."""

    def __init__(self, reactor: Any, tcp: TCPOptions) -> None:
        self.reactor, self.tcp_options = reactor, tcp
        self.port, self.backlog = tcp.port, tcp.backlog
        self.interface, self.reuse_port = tcp.interface, tcp.reuse_port

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        adopted = adopt_inherited(self.reactor, self.port, factory)
        if adopted is not None:
            return adopted
        # tcp.Port accepts a Binding in place of the port number.
        # SO_REUSEADDR stays on, as listenTCP sets it for a plain port number.
        binding = makeBinding(
            self.interface, self.port, reuseAddress=True, reusePort=self.reuse_port
        )
        # The interface is passed too: tcp.Port picks IPv6 from it, not from the Binding.
        listening = defer.execute(
            self.reactor.listenTCP, binding, factory, self.backlog, self.interface
        )
        return listening.addCallback(stop_accepting_on_shutdown, self.reactor)

    def tcp(self) -> ReusePortTCPEndpoint:
        """This endpoint's TCP port alone, for a wrapper that listens on it (PROXY headers)."""
        return ReusePortTCPEndpoint(self.reactor, self.tcp_options)


class ReusePortTLSEndpoint(ReusePortTCPEndpoint):
    """Listens for TLS on a TCP port, with SO_REUSEPORT when `reuse_port` is true, and after
    a PROXY header when `proxy_protocol` is true."""

    def __init__(
        self,
        reactor: Any,
        tcp: TCPOptions,
        tls_options: CertificateOptions,
        proxy_protocol: bool = False,
    ) -> None:
        super().__init__(reactor, tcp)
        self.tls_options = tls_options
        self.proxy_protocol = proxy_protocol

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        # What listenSSL does with a port number (TLS in memory over a plain TCP port), with
        # a TLS layer that writes at once (realtime/server/writethrough.py).
        cap = AddressCap(connections_per_address(), "TLS")
        if self.proxy_protocol:
            # The cap counts the address each PROXY header names, as soon as it is read.
            proxied = ProxyProtocolEndpoint(self.tcp(), configured_policy().trusted, cap)
            return proxied.listen(WriteThroughTLSFactory(self.tls_options, False, factory))
        tls_factory = CappedTLSFactory(self.tls_options, False, factory)
        tls_factory.cap = cap
        return super().listen(tls_factory)


def adopt_inherited(
    reactor: Any, port: int, factory: IProtocolFactory
) -> defer.Deferred[IListeningPort] | None:
    """Serve `factory` on the listening socket `serve`'s supervisor handed down for `port`
    (realtime/server/listeners.py); None when there is none, and the endpoint binds its own."""
    try:
        listener = inherited_listener(port)
    except ValueError:
        return defer.fail()
    if listener is None:
        return None

    def adopt() -> IListeningPort:
        try:
            return reactor.adoptStreamPort(listener.fileno(), listener.family, factory)
        finally:
            listener.close()  # the adopted port holds a descriptor of its own

    listening = defer.execute(adopt)
    return listening.addCallback(stop_accepting_on_shutdown, reactor, take_queued=False)


def stop_accepting_on_shutdown(
    port: IListeningPort, reactor: Any, take_queued: bool = True
) -> IListeningPort:
    """Make `port` the first thing a shutdown closes, and let its last connections settle.

    A worker that stops (SIGTERM from `serve`'s rolling restart) takes no new connection once
    it has begun to stop. On a socket of its own (`take_queued`), this first accepts what the
    kernel already queued for it, since closing the socket resets those. On a socket shared with
    its successor (inherited from `serve`'s supervisor) it leaves them to the successor. Then
    it stops listening, and gives TLS handshakes under way DRAIN seconds before daphne closes
    every connection.
    """

    def stop_accepting() -> defer.Deferred[None]:
        if take_queued and hasattr(port, "doRead"):  # a real tcp.Port
            port.doRead()
        port.stopListening()
        return task.deferLater(reactor, DRAIN, lambda: None)

    reactor.addSystemEventTrigger("before", "shutdown", stop_accepting)
    return port


def port_number(prefix: str, name: str, value: str, lowest: int = 0) -> int:
    """`value` as a port from `lowest` to 65535, or a ValueError naming the endpoint's option."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not lowest <= port <= 65535:
        raise ValueError(
            f"{prefix}: {name} must be a number from {lowest} to 65535, not {value!r}."
        )
    return port


def yes_no(prefix: str, name: str, value: str) -> bool:
    try:
        return YES_NO[value.lower()]
    except KeyError:
        raise ValueError(f"{prefix}: {name} must be yes or no, not {value!r}.") from None


@implementer(IPlugin, IStreamServerEndpointStringParser)
class EndpointParser:
    """The string parser of realtime's endpoints: the TCP options they share, checked here,
    then the endpoint's own options, which `endpoint()` takes (as keyword arguments)."""

    prefix: str

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        # The catch-all signature is the one zope.interface accepts for the interface method.
        return self._parse(reactor, *args, **kwargs)

    # The option names are camelCase, as in Twisted's own endpoints.
    def _parse(
        self,
        reactor: Any,
        port: str,
        *,
        interface: str = "",
        backlog: str = "50",
        reusePort: str = "no",
        **options: str,
    ) -> Any:
        reuse_port = yes_no(self.prefix, "reusePort", reusePort)
        if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError(
                f"{self.prefix}: reusePort=yes needs SO_REUSEPORT, which is missing here."
            )
        tcp = TCPOptions(
            port_number(self.prefix, "the port", port), interface, int(backlog), reuse_port
        )
        return self.endpoint(reactor, tcp, **options)

    def endpoint(self, reactor: Any, tcp: TCPOptions, **options: str) -> IStreamServerEndpoint:
        raise NotImplementedError


class ReusePortTLSParser(EndpointParser):
    """Parses `realtime:PORT:privateKey=KEY:certKey=CERT[:...]` (see the module docstring)."""

    prefix = PREFIX

    def endpoint(
        self,
        reactor: Any,
        tcp: TCPOptions,
        privateKey: str | None = None,
        certKey: str | None = None,
        extraCertChain: str | None = None,
        profile: str = DEFAULT_PROFILE,
        proxyProtocol: str = "no",
    ) -> ReusePortTLSEndpoint:
        if not privateKey or not certKey:
            raise ValueError(f"{PREFIX}: both privateKey=FILE and certKey=FILE are required.")
        tls_options = server_tls_options(certKey, privateKey, extraCertChain, profile)
        proxy_protocol = yes_no(PREFIX, "proxyProtocol", proxyProtocol)
        return ReusePortTLSEndpoint(reactor, tcp, tls_options, proxy_protocol)


parser = ReusePortTLSParser()


def realtime_endpoint(
    port: int,
    cert: Path | str,
    key: Path | str,
    interface: str | None = None,
    *,
    reuse_port: bool = False,
    profile: str | None = None,
    proxy_protocol: bool = False,
) -> str:
    """A `realtime:` endpoint string (pure: no file is read).

    >>> realtime_endpoint(8443, "certs/localhost.pem", "certs/localhost-key.pem", profile="modern")
    'realtime:8443:privateKey=certs/localhost-key.pem:certKey=certs/localhost.pem:profile=modern'

    Paths and the interface are escaped (realtime/common/endpoint_strings.py); an IPv6 interface
    may be given as "::1" or "[::1]". Without `profile` the endpoint's default (intermediate)
    applies. Pass it to `daphne -e`.
    """
    return endpoint_string(
        PREFIX,
        port,
        privateKey=key,
        certKey=cert,
        interface=interface,
        reusePort=reuse_port,
        profile=None if profile is None else tls_profile(profile).name,
        proxyProtocol=proxy_protocol,
    )


def reuseport_endpoint(
    port: int,
    cert: Path | str,
    key: Path | str,
    interface: str | None = None,
    profile: str | None = None,
    proxy_protocol: bool = False,
) -> str:
    """A `realtime:` endpoint string with reusePort=yes (pure: no file is read).

    >>> reuseport_endpoint(8443, "certs/localhost.pem", "certs/localhost-key.pem")
    'realtime:8443:privateKey=certs/localhost-key.pem:certKey=certs/localhost.pem:reusePort=yes'
    """
    return realtime_endpoint(
        port, cert, key, interface, reuse_port=True, profile=profile, proxy_protocol=proxy_protocol
    )
