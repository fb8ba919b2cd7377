"""Plain HTTP for workers behind a TLS-terminating proxy: the `realtime-plain:` endpoint.

    realtime-plain:PORT[:interface=ADDR][:backlog=N][:reusePort=yes|no]

`serve --plain` starts its workers with it: they speak plain HTTP and WebSocket on a loopback
port and nginx (deploy/nginx/realtime.conf) holds the certificate. Like `realtime:` it adopts
the listening socket `serve`'s supervisor opened for the worker's slot (so rolling restarts
reset no connection), and binds its own with SO_REUSEPORT when run alone.
"""

from __future__ import annotations

from typing import Any

from realtime.common.endpoint_strings import endpoint_string
from realtime.server.endpoints import EndpointParser, ReusePortTCPEndpoint, TCPOptions

PREFIX = "realtime-plain"


# Plain TCP on the inherited socket of its slot, or with SO_REUSEPORT.
PlainEndpoint = ReusePortTCPEndpoint


class PlainParser(EndpointParser):
    prefix = PREFIX

    def endpoint(self, reactor: Any, tcp: TCPOptions) -> PlainEndpoint:
        return PlainEndpoint(reactor, tcp)


parser = PlainParser()


def plain_endpoint(port: int, interface: str | None = None, *, reuse_port: bool = False) -> str:
    """A `realtime-plain:` endpoint string.

    >>> plain_endpoint(8000, "127.0.0.1", reuse_port=True)
    'realtime-plain:8000:interface=127.0.0.1:reusePort=yes'
    """
    return endpoint_string(PREFIX, port, interface=interface, reusePort=reuse_port)
