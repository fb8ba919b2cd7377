"""Tell systemd how the service is doing (sd_notify), for `Type=notify` units. Standard library.

systemd passes a datagram socket in NOTIFY_SOCKET (a path, or an abstract name written with a
leading "@"); a service that writes READY=1 there makes `systemctl start` wait until it
serves, so the next command of a script (certbot, a health check) finds it listening.
Without NOTIFY_SOCKET (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time

NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify(*assignments: str) -> bool:
    """Send `READY=1`-style lines to systemd; True if there was a socket to send them to."""
    address = os.environ.get(NOTIFY_SOCKET, "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall("\n".join(assignments).encode())
    return True


def reloading() -> bool:
    """RELOADING=1 with the monotonic time systemd 253+ asks for (older ones ignore it)."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
