"""Registers realtime's endpoints with Twisted's plugin system: `realtime:` (TLS,
realtime/server/endpoints.py), `realtime-redirect:` (plain HTTP to HTTPS,
realtime/server/redirect.py) and `realtime-plain:` (plain HTTP behind a proxy,
realtime/server/plain.py).

Twisted looks for plugins in a `twisted/plugins` directory under every sys.path entry, and
daphne puts "." on sys.path, so `daphne -e realtime:...` run from the project root finds this
module. Neither this directory nor its parent has an __init__.py, on purpose: a directory
without one never shadows the real `twisted` package, it only adds to `twisted.plugins`.
Twisted caches what it found in dropin.cache here (ignored by git).
"""

from __future__ import annotations

from realtime.server.endpoints import parser
from realtime.server.plain import parser as plain_parser
from realtime.server.redirect import parser as redirect_parser

__all__ = ["parser", "plain_parser", "redirect_parser"]
