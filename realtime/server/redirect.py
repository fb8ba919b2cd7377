"""Plain HTTP that only ever redirects to HTTPS: the `realtime-redirect:` Twisted endpoint.

    realtime-redirect:PORT:httpsPort=TLSPORT[:interface=ADDR][:backlog=N][:reusePort=yes|no]
                      [:acmeWebroot=DIR]

Every request gets a redirect to https://<host>:<TLSPORT><path> (301 for GET and HEAD, 308
otherwise; 400 for a Host not in ALLOWED_HOSTS), except Let's Encrypt's HTTP-01 challenges,
served from acmeWebroot when it is given. `listen()` ignores the factory daphne hands it and
serves a tiny Twisted web site instead, so nothing of the application is ever served in
plaintext. Its connections have the request deadlines and the per-address cap of the TLS port.
How to use it, and why: docs/deployment.md ("Plain HTTP on port 80"); the limits: docs/security.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from realtime.common.endpoint_strings import endpoint_string
from realtime.server import config
from realtime.server.address_cap import AddressCap, connections_per_address
from realtime.server.endpoints import (
    EndpointParser,
    ReusePortTCPEndpoint,
    TCPOptions,
    port_number,
)
from realtime.server.request_deadline import DeadlineHTTPChannel

PREFIX = "realtime-redirect"
HTTPS_PORT = 443
IDLE_TIMEOUT = 10  # seconds a plain-HTTP connection may stay silent (Twisted's default: 60)
# RFC 3986 reserved and unreserved characters, and "%" of existing escapes: kept as sent.
URI_SAFE = "!#$%&'()*+,-./:;=?@[]_~"
ACME_PATH = b"/.well-known/acme-challenge/"
ACME_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,256}")  # base64url, as ACME servers make them
ACME_MAX_BYTES = 4096  # a key authorization is about 90 bytes
CREDENTIALS_IN_CLEAR = (
    b"Bad Request: this request carries credentials (Authorization) over plain HTTP. Send it "
    b"over HTTPS only, and replace those credentials: they crossed the network in clear.\n"
)


# A Host header's name (or bracketed IPv6 address) and port, as Django's own host check reads it.
HOST = re.compile(r"([a-z0-9.-]+|\[[a-f0-9]*:[a-f0-9.:]+\])(?::([0-9]+))?")


def allowed_domain(host_header: str, allowed_hosts: Iterable[str]) -> str | None:
    """The Host header's domain when it is one of `allowed_hosts` (ALLOWED_HOSTS' patterns:
    ".example.com" for the domain and its subdomains, "*" for any), else None."""
    match = HOST.fullmatch(host_header.lower())
    if match is None:
        return None
    domain = match.group(1).removesuffix(".")
    return domain if any(same_domain(domain, p) for p in allowed_hosts) else None


def same_domain(domain: str, pattern: str) -> bool:
    pattern = pattern.lower()
    if pattern.startswith("."):
        return domain.endswith(pattern) or domain == pattern[1:]
    return pattern in ("*", domain)


def redirect_status(method: str) -> int:
    """301 for GET and HEAD (understood by every client); 308 keeps a POST a POST."""
    return 301 if method in ("GET", "HEAD") else 308


def redirect_location(
    host_header: str | None, https_port: int, target: str, allowed_hosts: Iterable[str]
) -> str | None:
    """The https URL for a plain-HTTP request, or None when its Host is missing or not allowed.

    >>> redirect_location("example.com:80", 443, "/a?b=1", ["example.com"])
    'https://example.com/a?b=1'
    >>> redirect_location("[::1]:8080", 8443, "/", ["[::1]"])
    'https://[::1]:8443/'
    """
    domain = allowed_domain(host_header or "", allowed_hosts)
    if not domain:
        return None
    if not target.startswith("/"):
        # An absolute-form request target (http://host/path) or "*": only its path counts.
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not target.startswith("/"):
            target = "/" + target
    port = "" if https_port == HTTPS_PORT else f":{https_port}"
    return f"https://{domain}{port}{quote(target, safe=URI_SAFE)}"


def acme_challenge(webroot: Path, path: bytes) -> bytes | None:
    """The key authorization certbot left for `path` (/.well-known/acme-challenge/<token>),
    or None: not such a path, a token that is not base64url (../ included), or no file."""
    if not path.startswith(ACME_PATH):
        return None
    token = path[len(ACME_PATH) :]
    if not ACME_TOKEN.fullmatch(token):
        return None
    challenge = webroot / ".well-known" / "acme-challenge" / token.decode("ascii")
    try:
        with challenge.open("rb") as file:
            return file.read(ACME_MAX_BYTES)
    except OSError:
        return None


class RedirectResource(Resource):
    """Answers every request with a redirect to the same path over HTTPS (ACME challenges
    excepted, when a webroot is given)."""

    isLeaf = True

    def __init__(self, https_port: int, acme_webroot: Path | None = None) -> None:
        super().__init__()
        self.https_port = https_port
        self.acme_webroot = acme_webroot
        # Once per listener, not per request: a redirect is one cheap packet for anyone.
        self.allowed_hosts = config.current().allowed_hosts

    def render(self, request: Request) -> bytes:
        if self.acme_webroot is not None and request.path.startswith(ACME_PATH):
            return self.render_acme(request, self.acme_webroot)
        host = request.getHeader("host")
        target = request.uri.decode("latin-1")
        location = redirect_location(host, self.https_port, target, self.allowed_hosts)
        request.responseHeaders.removeHeader("server")  # no banner: Twisted sets its version
        request.setHeader("content-type", "text/plain; charset=utf-8")
        if location is None:
            request.setResponseCode(400)
            return b"Bad Request: unknown or missing Host.\n"
        if request.getHeader("authorization") is not None:
            # A client that followed a redirect would succeed, and nobody would notice that
            # its credentials crossed the network in clear: refuse, without a Location.
            request.setResponseCode(400)
            return CREDENTIALS_IN_CLEAR
        request.setResponseCode(redirect_status(request.method.decode("latin-1")))
        request.setHeader("location", location)
        return f"This site is served over HTTPS: {location}\n".encode()

    @staticmethod
    def render_acme(request: Request, webroot: Path) -> bytes:
        request.responseHeaders.removeHeader("server")
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader("allow", "GET, HEAD")
            return b""
        answer = acme_challenge(webroot, request.path)
        if answer is None:
            request.setResponseCode(404)
            request.setHeader("content-type", "text/plain; charset=utf-8")
            return b"No such challenge.\n"
        request.setHeader("content-type", "application/octet-stream")
        return answer


def request_limits() -> tuple[float, float]:
    """The seconds for a request's headers and the bytes a second for its body, as on HTTPS:
    REALTIME_WS_HANDSHAKE_TIMEOUT (at most IDLE_TIMEOUT) and REALTIME_HTTP_BODY_MIN_RATE."""
    cfg = config.current()
    return min(float(cfg.ws_handshake_timeout), IDLE_TIMEOUT), float(cfg.http_body_min_rate)


class RedirectChannel(DeadlineHTTPChannel):
    """Headers within IDLE_TIMEOUT seconds in total, bodies at the minimum rate; releases its
    place under the per-address cap when it closes."""

    first_request_timeout = IDLE_TIMEOUT
    address_key: str | None = None
    cap: AddressCap | None = None

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if self.cap is not None:
            self.cap.release(self.address_key)
            self.cap = None


class RedirectSite(Site):
    """Twisted's Site with RedirectChannel, at most `cap.limit` connections per address."""

    protocol = RedirectChannel
    cap: AddressCap
    request_timeout: float = IDLE_TIMEOUT
    body_min_rate: float = RedirectChannel.body_min_rate

    def buildProtocol(self, addr: Any) -> RedirectChannel | None:
        key = self.cap.admit(addr)
        if key is None:
            return None  # Twisted closes the connection
        channel = super().buildProtocol(addr)
        channel.address_key, channel.cap = key, self.cap
        channel.first_request_timeout = self.request_timeout
        channel.body_min_rate = self.body_min_rate
        return channel


class RedirectEndpoint(ReusePortTCPEndpoint):
    """Listens for plain HTTP on a TCP port with a redirect-only site (see the module doc)."""

    def __init__(
        self, reactor: Any, tcp: TCPOptions, https_port: int, acme_webroot: Path | None = None
    ) -> None:
        super().__init__(reactor, tcp)
        self.https_port = https_port
        self.acme_webroot = acme_webroot

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        # `factory` (daphne's application) is ignored on purpose: this port only redirects.
        resource = RedirectResource(self.https_port, self.acme_webroot)
        site = RedirectSite(resource, timeout=IDLE_TIMEOUT)
        site.cap = AddressCap(connections_per_address(), "redirect")
        site.request_timeout, site.body_min_rate = request_limits()
        return super().listen(site)


class RedirectParser(EndpointParser):
    """Parses `realtime-redirect:PORT:httpsPort=TLSPORT[:...]` (see the module docstring)."""

    prefix = PREFIX

    def endpoint(
        self, reactor: Any, tcp: TCPOptions, httpsPort: str | None = None, acmeWebroot: str = ""
    ) -> RedirectEndpoint:
        if httpsPort is None:
            raise ValueError(f"{PREFIX}: httpsPort=PORT (where HTTPS is served) is required.")
        webroot = Path(acmeWebroot) if acmeWebroot else None
        if webroot is not None and not webroot.is_dir():
            raise ValueError(f"{PREFIX}: acmeWebroot {acmeWebroot!r} is not a directory.")
        https_port = port_number(PREFIX, "httpsPort", httpsPort, lowest=1)
        return RedirectEndpoint(reactor, tcp, https_port, webroot)


parser = RedirectParser()


def redirect_endpoint(
    port: int,
    https_port: int,
    interface: str | None = None,
    *,
    reuse_port: bool = False,
    acme_webroot: Path | str | None = None,
) -> str:
    """A `realtime-redirect:` endpoint string.

    >>> redirect_endpoint(80, 443, "0.0.0.0", reuse_port=True)
    'realtime-redirect:80:httpsPort=443:interface=0.0.0.0:reusePort=yes'

    An IPv6 interface may be given as "::" or "[::]"; it is escaped for the endpoint syntax.
    """
    return endpoint_string(
        PREFIX,
        port,
        httpsPort=https_port,
        interface=interface,
        reusePort=reuse_port,
        acmeWebroot=acme_webroot,
    )
