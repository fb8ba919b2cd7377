"""Listening sockets that outlive a worker: `serve`'s supervisor opens them, its workers adopt them.

Each worker slot of `manage.py serve` has one listening socket per port, bound with
SO_REUSEPORT; the supervisor keeps them, and every process of the slot inherits and serves them,
so a rolling restart resets no queued connection (Linux resets a closing socket's accept queue).
Two environment variables hand them to a worker: REALTIME_LISTEN_FDS (port:descriptor of each
socket, e.g. `8443:5,8080:6`) and REALTIME_READY_FD (a pipe to write "ready" to once it serves).
Why, and the trade-offs: docs/deployment.md ("How the workers share the port"). Standard library
only: realtime/server/supervisor.py imports it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping, MutableMapping

LISTEN_FDS = "REALTIME_LISTEN_FDS"
READY_FD = "REALTIME_READY_FD"
READY = b"ready\n"
BACKLOG = 50  # Twisted's default, which the endpoints used when they bound their own sockets


def open_listener(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A non-blocking TCP socket listening on host:port with SO_REUSEPORT (raises OSError)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(address)
        listener.listen(backlog)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


def format_listen_fds(fds: Mapping[int, int]) -> str:
    """A REALTIME_LISTEN_FDS value from port -> descriptor.

    >>> format_listen_fds({8443: 5, 8080: 6})
    '8443:5,8080:6'
    """
    return ",".join(f"{port}:{fd}" for port, fd in fds.items())


def parse_listen_fds(value: str) -> dict[int, int]:
    """port -> descriptor from a REALTIME_LISTEN_FDS value; ValueError names a bad entry."""
    fds = {}
    for entry in filter(None, value.split(",")):
        port, _, fd = entry.partition(":")
        if not (port.isdigit() and fd.isdigit()):
            raise ValueError(f"{LISTEN_FDS}: expected PORT:FD entries, not {entry!r}.")
        fds[int(port)] = int(fd)
    return fds


def inherited_listener(
    port: int, environ: MutableMapping[str, str] = os.environ
) -> socket.socket | None:
    """The listening socket inherited for `port`, or None when there is none.

    Each is handed out once (its entry leaves the environment's value): a second endpoint on
    the same port binds a socket of its own. Raises ValueError when the descriptor is not a
    TCP socket listening on that port.
    """
    fds = parse_listen_fds(environ.get(LISTEN_FDS, ""))
    fd = fds.pop(port, None)
    if fd is None:
        return None
    environ[LISTEN_FDS] = format_listen_fds(fds)
    try:
        listener = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"{LISTEN_FDS}: descriptor {fd} is not a socket: {exc}.") from None
    listening = listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if listener.type != socket.SOCK_STREAM or not listening or _port_of(listener) != port:
        listener.close()
        raise ValueError(f"{LISTEN_FDS}: descriptor {fd} is not listening on TCP port {port}.")
    return listener


def _port_of(listener: socket.socket) -> int | None:
    with contextlib.suppress(OSError, IndexError, TypeError):
        return listener.getsockname()[1]
    return None


def notify_ready(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Tell the supervisor, if one is waiting, that this process serves. True when it was told."""
    fd = environ.pop(READY_FD, "")
    if not fd.isdigit():
        return False
    try:
        os.write(int(fd), READY)
    except OSError:  # the supervisor is gone: it closed its end
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(int(fd))
    return True
