"""`python -m realtime.server ...`: the same as `realtime-daphne ...` (realtime/server/cli.py)."""

from __future__ import annotations

from realtime.server.cli import main

main()
