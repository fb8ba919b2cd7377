"""How many files a worker may open, raised to what the system allows, and whether it is enough.

Every connection is a descriptor. A process starts with the soft limit (often 1,024, which a
few hundred slow clients filled); it may raise that up to the hard limit itself, as nginx's
`worker_rlimit_nofile` does, and the workers inherit it. `serve` does so at start and warns
when even the hard limit leaves room for fewer than ADDRESSES_AT_CAP client addresses at the
per-address cap (deploy/systemd/realtime.service sets LimitNOFILE=65536).
"""

from __future__ import annotations

import resource

ADDRESSES_AT_CAP = 64


def raise_to_hard_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def too_few_for(limit: int, per_address: int) -> str | None:
    """A warning when `limit` descriptors hold fewer than ADDRESSES_AT_CAP addresses at the cap."""
    if per_address <= 0:
        return None
    needed = ADDRESSES_AT_CAP * per_address
    if limit >= needed:
        return None
    return (
        f"Each worker may open {limit} files: {limit // per_address} client addresses at the "
        f"cap of {per_address} connections (REALTIME_MAX_CONNECTIONS_PER_ADDRESS) fill it, and "
        f"then new clients fail. Raise it to {needed} or more (LimitNOFILE= in systemd, "
        "minfds= for supervisord, `ulimit -n`), or lower the cap."
    )
