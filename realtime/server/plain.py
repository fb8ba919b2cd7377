"""Plain HTTP for workers behind a TLS-terminating proxy: the `realtime-plain:` endpoint.

    realtime-plain:PORT[:interface=ADDR][:backlog=N][:reusePort=yes|no]

`serve --plain` starts its workers with it: they speak plain HTTP and WebSocket on a loopback
port and nginx (deploy/nginx/realtime.conf) holds the certificate. Like `realtime:` it adopts
the listening socket `serve`'s supervisor opened for the worker's slot (so rolling restarts
reset no connection), and binds its own with SO_REUSEPORT when run alone.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

from realtime.server.endpoints import ReusePortTCPEndpoint
from realtime.tls.devca import escape_endpoint_value

PREFIX = "realtime-plain"


# Plain TCP on the inherited socket of its slot, or with SO_REUSEPORT.
PlainEndpoint = ReusePortTCPEndpoint


@implementer(IPlugin, IStreamServerEndpointStringParser)
class PlainParser:
    prefix = PREFIX

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> PlainEndpoint:
        return self._parse(reactor, *args, **kwargs)

    def _parse(
        self,
        reactor: Any,
        port: str,
        interface: str = "",
        backlog: str = "50",
        reusePort: str = "no",
    ) -> PlainEndpoint:
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{PREFIX}: the port must be a number from 0 to 65535, not {port!r}.")
        if reusePort.lower() not in ("yes", "no"):
            raise ValueError(f"{PREFIX}: reusePort must be yes or no, not {reusePort!r}.")
        return PlainEndpoint(
            reactor, int(port), int(backlog), interface, reusePort.lower() == "yes"
        )


parser = PlainParser()


def plain_endpoint(port: int, interface: str | None = None, *, reuse_port: bool = False) -> str:
    """A `realtime-plain:` endpoint string.

    >>> plain_endpoint(8000, "127.0.0.1", reuse_port=True)
    'realtime-plain:8000:interface=127.0.0.1:reusePort=yes'
    """
    parts = [PREFIX, str(port)]
    if interface:
        parts.append("interface=" + escape_endpoint_value(interface.strip("[]")))
    if reuse_port:
        parts.append("reusePort=yes")
    return ":".join(parts)
