"""`runserver` with `--tls`: HTTPS and WSS on one port, with autoreload, like Django's runserver.

With --tls it serves through the `realtime:` endpoint, so with the same TLS profile
(REALTIME_TLS_PROFILE) as `serve`; `--redirect-http PORT` adds a plain-HTTP port that only
redirects to it. Without --tls it is daphne's runserver (HTTP and WS). Either way it runs
RealtimeServer, so WebSocket scopes carry the real scheme.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management import CommandError
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV

from realtime.conf import conf
from realtime.management.certificates import add_certificate_options, serving_certificate
from realtime.server.daphne_server import RealtimeServer
from realtime.server.endpoints import realtime_endpoint
from realtime.server.redirect import redirect_endpoint
from realtime.upstream import DaphneRunserverCommand


class Command(DaphneRunserverCommand):
    help = (
        "Starts a development server with autoreload: HTTP and WS, or with --tls HTTPS and WSS "
        "on the same port using the development certificate (created when missing)."
    )
    server_cls = RealtimeServer

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--tls",
            action="store_true",
            help="Serve HTTPS and WSS. Uses certs/localhost.pem, created by devcert if missing.",
        )
        add_certificate_options(parser, only_with="With --tls: ")

    def handle(self, *args: Any, **options: Any) -> None:
        self.tls_files: tuple[Path, Path] | None = None
        self.redirect_port: int | None = options.get("redirect_http")
        if options["tls"]:
            self.protocol = "https"
            self.tls_files = self._tls_files(options.get("cert"), options.get("key"))
            self.server_cls = self._build_tls_server
        elif options.get("cert") or options.get("key") or self.redirect_port is not None:
            raise CommandError("--cert, --key and --redirect-http only apply with --tls.")
        if self.redirect_port is not None and not 1 <= self.redirect_port <= 65535:
            raise CommandError("--redirect-http must be a port from 1 to 65535.")
        super().handle(*args, **options)

    def _tls_files(self, cert: str | None, key: str | None) -> tuple[Path, Path]:
        # Under autoreload the reloader's parent has already announced the certificate.
        quiet = os.environ.get(DJANGO_AUTORELOAD_ENV) == "true"
        return serving_certificate(cert, key, None if quiet else self.stdout.write)

    def _build_tls_server(self, **kwargs: Any) -> RealtimeServer:
        """Called by daphne's inner_run in place of the server class: swaps in the TLS endpoint."""
        assert self.tls_files is not None
        cert, key = self.tls_files
        port, profile = int(self.port), conf.REALTIME_TLS_PROFILE
        endpoints = [realtime_endpoint(port, cert, key, self.addr, profile=profile)]
        if self.redirect_port is not None:
            endpoints.append(redirect_endpoint(self.redirect_port, port, self.addr))
        kwargs["endpoints"] = endpoints
        return RealtimeServer(**kwargs)
