"""The `realtime:` Twisted endpoint: TLS on a TCP port that several processes can share.

    realtime:PORT:privateKey=KEY:certKey=CERT[:interface=ADDR][:backlog=N]
             [:reusePort=yes|no][:extraCertChain=FILE]

It is the stock `ssl:` endpoint plus `reusePort=yes`, which sets SO_REUSEPORT on the listening
socket: several daphne processes of the same user can then bind the same port and the Linux
kernel spreads new connections over them. `manage.py serve` starts its workers with it; plain
`daphne -e realtime:...` works too when run from the project root, where
twisted/plugins/realtime_endpoints.py registers this parser. daphne's `--fd` cannot do this:
it only serves plaintext on an inherited socket.

`certKey` may hold the whole chain (leaf first, as a fullchain.pem does); the stock `ssl:`
endpoint reads only its first certificate. TLS 1.2 is the minimum.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.tcp import makeBinding
from twisted.plugin import IPlugin
from zope.interface import implementer

from realtime.tls import escape_endpoint_value

PREFIX = "realtime"
YES_NO = {"yes": True, "no": False}


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


def server_tls_options(
    cert_path: Path | str, key_path: Path | str, extra_chain: Path | str | None = None
) -> CertificateOptions:
    """The server's TLS settings: certificate, chain and key from PEM files, TLS 1.2 or newer.

    `cert_path` holds the server certificate, optionally followed by its intermediates;
    `extra_chain` adds more intermediates. Raises ValueError naming the file at fault.
    """
    leaf, *chain = load_certificates(cert_path)
    key = load_private_key(key_path)
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise ValueError(f"The private key {key_path} does not belong to {cert_path}.")
    if extra_chain is not None:
        chain += load_certificates(extra_chain)
    # cryptography objects, not pyOpenSSL's X509/PKey wrappers: pyOpenSSL 26 deprecates those,
    # and Twisted hands both kinds to the OpenSSL context unchanged.
    return CertificateOptions(
        privateKey=key,
        certificate=leaf,
        extraCertChain=chain or None,
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


# --- Endpoint --------------------------------------------------------------------------------


@implementer(IStreamServerEndpoint)
class ReusePortTLSEndpoint:
    """Listens for TLS on a TCP port, with SO_REUSEPORT when `reuse_port` is true."""

    def __init__(
        self,
        reactor: Any,
        port: int,
        tls_options: CertificateOptions,
        backlog: int = 50,
        interface: str = "",
        reuse_port: bool = True,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.tls_options = tls_options
        self.backlog = backlog
        self.interface = interface
        self.reuse_port = reuse_port

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        # tcp.Port accepts a Binding in place of the port number, and listenSSL hands it on.
        # SO_REUSEADDR stays on, as listenTCP sets it for a plain port number.
        binding = makeBinding(
            self.interface, self.port, reuseAddress=True, reusePort=self.reuse_port
        )
        # The interface is passed too: tcp.Port picks IPv6 from it, not from the Binding.
        return defer.execute(
            self.reactor.listenSSL,
            binding,
            factory,
            self.tls_options,
            self.backlog,
            self.interface,
        )


def _port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{PREFIX}: the port must be a number from 0 to 65535, not {value!r}.")
    return port


def _yes_no(name: str, value: str) -> bool:
    try:
        return YES_NO[value.lower()]
    except KeyError:
        raise ValueError(f"{PREFIX}: {name} must be yes or no, not {value!r}.") from None


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortTLSParser:
    """Parses `realtime:PORT:privateKey=KEY:certKey=CERT[:...]` (see the module docstring)."""

    prefix = PREFIX

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> ReusePortTLSEndpoint:
        # The catch-all signature is the one zope.interface accepts for the interface method.
        return self._parse(reactor, *args, **kwargs)

    # The option names are camelCase, as in Twisted's own ssl: endpoint.
    def _parse(
        self,
        reactor: Any,
        port: str,
        privateKey: str | None = None,
        certKey: str | None = None,
        interface: str = "",
        backlog: str = "50",
        reusePort: str = "no",
        extraCertChain: str | None = None,
    ) -> ReusePortTLSEndpoint:
        port_number = _port_number(port)
        if not privateKey or not certKey:
            raise ValueError(f"{PREFIX}: both privateKey=FILE and certKey=FILE are required.")
        reuse_port = _yes_no("reusePort", reusePort)
        if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError(f"{PREFIX}: reusePort=yes needs SO_REUSEPORT, which is missing here.")
        return ReusePortTLSEndpoint(
            reactor,
            port_number,
            server_tls_options(certKey, privateKey, extraCertChain),
            backlog=int(backlog),
            interface=interface,
            reuse_port=reuse_port,
        )


parser = ReusePortTLSParser()


def reuseport_endpoint(
    port: int, cert: Path | str, key: Path | str, interface: str | None = None
) -> str:
    """A `realtime:` endpoint string with reusePort=yes (pure: no file is read).

    >>> reuseport_endpoint(8443, "certs/localhost.pem", "certs/localhost-key.pem")
    'realtime:8443:privateKey=certs/localhost-key.pem:certKey=certs/localhost.pem:reusePort=yes'

    Paths and the interface are escaped as in `realtime.tls.ssl_endpoint`; an IPv6 interface
    may be given as "::1" or "[::1]". Pass it to `daphne -e`.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, not {port!r}.")
    parts = [
        PREFIX,
        str(port),
        "privateKey=" + escape_endpoint_value(str(key)),
        "certKey=" + escape_endpoint_value(str(cert)),
    ]
    if interface:
        if interface.startswith("[") and interface.endswith("]"):
            interface = interface[1:-1]
        parts.append("interface=" + escape_endpoint_value(interface))
    parts.append("reusePort=yes")
    return ":".join(parts)
