"""Where realtime relies on autobahn's internals, in one place, each with its reason and cost.

tests/test_upstream.py is the contract: it asserts the pinned versions and every attribute and
behaviour used here, so that an upgrade fails there, loudly, rather than somewhere in a fan-out.
(The other reaches into Twisted and daphne are listed in that test too; moving them here is
the next step of issue 12.)
"""

from __future__ import annotations

from typing import Any

# The versions this module was written and measured against (requirements.txt pins them).
AUTOBAHN_VERSION = "26.10.2"


def write_prepared(protocol: Any, prepared: Any) -> None:
    """What autobahn's public `sendPreparedMessage()` does, without its per-call debug log.

    `sendPreparedMessage()` goes through `sendData()`, which formats a debug line
    (`hltype()`/`hlval()`, about 3 us) for every frame whether or not debug logging is on. In
    the fan-out that is once per socket per broadcast: measured with `make bench` (quick,
    5,000 WSS sockets on 2 workers), the public call gave 41,130 deliveries/s and p99 136 ms,
    this one 56,999 deliveries/s and p99 103 ms. So when nothing is queued and no compression
    was negotiated (daphne never offers permessage-deflate), the frame's bytes go to the
    transport as `sendData()` would write them; otherwise the public call does it.
    """
    if protocol._perMessageCompress is None and not protocol.send_queue:
        protocol.transport.write(prepared.payloadHybi)
    else:
        protocol.sendPreparedMessage(prepared)
