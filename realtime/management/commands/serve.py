"""`serve`: N daphne workers on one public TLS port, supervised, for production.

    python manage.py serve --workers 2 --port 443 --host 0.0.0.0 --cert F --key F \
        [--redirect-http 80]

Each worker is `python -m realtime.server -e realtime:PORT:...:reusePort=yes:profile=P
<ASGI_APPLICATION>` (`realtime-daphne`: daphne's command line with realtime's Server): the
same port, certificate and TLS profile (REALTIME_TLS_PROFILE) in every worker, SO_REUSEPORT so
that the kernel spreads connections over them (realtime/server/endpoints.py), and the Redis
channel layer between them. The supervisor opens each worker's listening sockets and keeps them
across that worker's restarts (realtime/server/listeners.py). With --redirect-http each worker
also answers plain HTTP on that port with a redirect to HTTPS (realtime/server/redirect.py).
realtime/server/supervisor.py restarts a worker that dies, replaces them one at a time on SIGHUP
(to load a renewed certificate) and stops them all on SIGTERM or SIGINT. See docs/deployment.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.broadcasting.redis_client import redis_host
from realtime.conf import conf
from realtime.management import daphne_application
from realtime.management.certificates import serving_certificate
from realtime.server.endpoints import reuseport_endpoint
from realtime.server.listeners import open_listener
from realtime.server.redirect import redirect_endpoint
from realtime.server.supervisor import DEFAULT_GRACE, Supervisor

# Each worker: daphne's command line with realtime's Server (realtime/server/cli.py), run by
# this Python, so it needs no script on PATH.
WORKER_COMMAND = [sys.executable, "-m", "realtime.server"]


def check_can_listen(host: str, port: int) -> None:
    """Open the port once as the supervisor will (SO_REUSEPORT), to fail early and clearly."""
    try:
        open_listener(host, port).close()
    except OSError as exc:
        hint = ""
        if port < 1024:
            hint = " Ports below 1024 need root or CAP_NET_BIND_SERVICE (docs/deployment.md)."
        raise CommandError(f"Cannot listen on {host} port {port}: {exc}.{hint}") from None


class Command(BaseCommand):
    help = (
        "Serves HTTPS and WSS with N supervised daphne workers sharing one TLS port "
        "(SO_REUSEPORT). More than one worker needs REDIS_URL."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="Number of daphne processes (default 1; one per CPU core is a good start).",
        )
        parser.add_argument("--port", type=int, default=8443, help="TLS port (default 8443).")
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="Address to listen on (default 127.0.0.1; 0.0.0.0 for all IPv4, :: for IPv6).",
        )
        parser.add_argument("--cert", help="PEM certificate, optionally followed by its chain.")
        parser.add_argument("--key", help="PEM private key of --cert.")
        parser.add_argument(
            "--redirect-http",
            type=int,
            metavar="PORT",
            help="Also listen for plain HTTP on PORT (e.g. 80) and redirect it to HTTPS.",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=DEFAULT_GRACE,
            help=f"Seconds the workers get to stop before SIGKILL (default {DEFAULT_GRACE}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workers, port, http_port = options["workers"], options["port"], options["redirect_http"]
        host = options["host"].removeprefix("[").removesuffix("]")
        self._check_options(workers, port, http_port)
        cert, key = serving_certificate(options["cert"], options["key"], self.stdout.write)
        ports = [port] if http_port is None else [port, http_port]
        for each in ports:
            check_can_listen(host, each)
        if getattr(settings, "STATIC_ROOT", None):
            call_command("collectstatic", interactive=False, verbosity=0)
        profile = conf.REALTIME_TLS_PROFILE
        endpoints = ["-e", reuseport_endpoint(port, cert.resolve(), key.resolve(), host, profile)]
        shown = f"[{host}]" if ":" in host else host
        self.stdout.write(
            f"Serving https://{shown}:{port}/ with {workers} daphne worker(s), "
            f"TLS profile {profile}."
        )
        if http_port is not None:
            endpoints += ["-e", redirect_endpoint(http_port, port, host, reuse_port=True)]
            self.stdout.write(f"Redirecting http://{shown}:{http_port}/ to HTTPS.")
        supervisor = Supervisor(
            [*WORKER_COMMAND, *endpoints, daphne_application()],
            workers,
            cwd=getattr(settings, "BASE_DIR", None) or Path.cwd(),
            grace=options["grace"],
            log=self._log,
            listen_on=[(host, each) for each in ports],
        )
        supervisor.run()

    def _log(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def _check_options(self, workers: int, port: int, http_port: int | None) -> None:
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        if not 1 <= port <= 65535:
            raise CommandError("--port must be from 1 to 65535.")
        if http_port is not None and not (1 <= http_port <= 65535 and http_port != port):
            raise CommandError("--redirect-http must be a port from 1 to 65535 other than --port.")
        if workers > 1 and redis_host() is None:
            raise CommandError(
                f"--workers {workers} needs a shared channel layer: the in-memory layer only "
                "works inside one process, so broadcasts would not reach the other workers' "
                "clients. Set REDIS_URL (redis:// or rediss://), or use --workers 1."
            )
