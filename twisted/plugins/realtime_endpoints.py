"""Registers the `realtime:` endpoint (realtime/endpoints.py) with Twisted's plugin system.

Twisted looks for plugins in a `twisted/plugins` directory under every sys.path entry, and
daphne puts "." on sys.path, so `daphne -e realtime:...` run from the project root finds this
module. Neither this directory nor its parent has an __init__.py, on purpose: a directory
without one never shadows the real `twisted` package, it only adds to `twisted.plugins`.
Twisted caches what it found in dropin.cache here (ignored by git).
"""

from __future__ import annotations

from realtime.endpoints import parser

__all__ = ["parser"]
