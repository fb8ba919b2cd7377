"""`serve`: N daphne workers on one public TLS port, supervised, for production.

    python manage.py serve --workers 2 --port 443 --host 0.0.0.0 --cert F --key F
                           [--redirect-http 80] [--proxy-protocol]

It checks what the workers will need, then hands realtime/server/supervisor.py one
`realtime-daphne -e realtime:PORT:...:reusePort=yes:profile=P` command per worker: the same
port, certificate and TLS profile in each, SO_REUSEPORT between them, the Redis channel layer
across them. The options, what it checks first, and how it runs: docs/deployment.md.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.conf import conf
from realtime.management import daphne_application
from realtime.management.certificates import add_certificate_options, serving_certificate
from realtime.messaging.redis_client import redis_host
from realtime.ops.health import services_down
from realtime.server.descriptors import raise_to_hard_limit, too_few_for
from realtime.server.endpoints import reuseport_endpoint
from realtime.server.listeners import open_listener
from realtime.server.plain import plain_endpoint
from realtime.server.redirect import redirect_endpoint
from realtime.server.supervisor import DEFAULT_GRACE, Supervisor

logger = logging.getLogger("realtime.serve")

# Each worker: daphne's command line with realtime's Server (realtime/server/cli.py), run by
# this Python, so it needs no script on PATH.
WORKER_COMMAND = [sys.executable, "-m", "realtime.server"]


def ping_interval(given: int | None) -> list[str]:
    """daphne's option for the seconds between pings to an idle socket: `--ping-interval`,
    else REALTIME_WS_PING_INTERVAL."""
    seconds = conf.REALTIME_WS_PING_INTERVAL if given is None else given
    if seconds < 1:
        raise CommandError("--ping-interval must be at least 1 second.")
    return ["--ping-interval", str(int(seconds))]


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
            "--plain",
            action="store_true",
            help="Plain HTTP workers behind a TLS-terminating proxy (deploy/nginx/): needs "
            "DJANGO_TRUST_PROXY_HEADERS=1; no certificate here.",
        )
        parser.add_argument(
            "--proxy-protocol",
            action="store_true",
            help="Behind a TCP load balancer that sends the PROXY protocol (HAProxy's "
            "send-proxy-v2): take each client's address from it. Only REALTIME_TRUSTED_PROXIES "
            "may connect; every connection must start with the header.",
        )
        parser.add_argument(
            "--host",
            "--bind",
            default="127.0.0.1",
            help="Address to listen on (default 127.0.0.1; 0.0.0.0 for all IPv4, :: for IPv6).",
        )
        add_certificate_options(parser)
        parser.add_argument(
            "--acme-webroot",
            metavar="DIR",
            default=None,
            help="With --redirect-http: serve /.well-known/acme-challenge/ from DIR (certbot "
            "certonly --webroot -w DIR) instead of redirecting it. Default: "
            "REALTIME_ACME_WEBROOT.",
        )
        parser.add_argument(
            "--wait-for-services",
            type=float,
            default=0,
            metavar="SECONDS",
            help="Wait up to SECONDS for the database and Redis to answer before starting "
            "(default 0: refuse to start at once when they do not).",
        )
        parser.add_argument(
            "--ping-interval",
            type=int,
            default=None,
            metavar="SECONDS",
            help="Seconds between the server's WebSocket pings to a socket that sends nothing "
            "(default: REALTIME_WS_PING_INTERVAL, 20). Keep it below the shortest idle "
            "timeout between clients and this server (proxies, load balancers, NAT).",
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
        if options["plain"]:
            self._check_plain(options)
        else:
            cert, key = serving_certificate(options["cert"], options["key"], self._log)
        ports = [port] if http_port is None else [port, http_port]
        for each in ports:
            check_can_listen(host, each)
        self._wait_for_services(options["wait_for_services"])
        self._check_descriptors(options["plain"])
        if getattr(settings, "STATIC_ROOT", None):
            call_command("collectstatic", interactive=False, verbosity=0)
        shown = f"[{host}]" if ":" in host else host
        trusted = ", ".join(conf.REALTIME_TRUSTED_PROXIES)
        if options["plain"]:
            # No daphne --proxy-headers: it would take the first X-Forwarded-For entry, the
            # client's own word. RealtimeServer takes the trusted proxy's (client_address.py).
            endpoints = ["-e", plain_endpoint(port, host, reuse_port=True)]
            self._log(
                f"Serving plain http://{shown}:{port}/ with {workers} daphne worker(s) for a "
                f"TLS-terminating proxy (X-Forwarded-* believed from {trusted} only)."
            )
        else:
            profile = conf.REALTIME_TLS_PROFILE
            proxy_protocol = options["proxy_protocol"]
            endpoint = reuseport_endpoint(
                port, cert.resolve(), key.resolve(), host, profile, proxy_protocol=proxy_protocol
            )
            endpoints = ["-e", endpoint]
            self._log(
                f"Serving https://{shown}:{port}/ with {workers} daphne worker(s), "
                f"TLS profile {profile}."
            )
            if proxy_protocol:
                self._log(f"PROXY protocol on: connections from {trusted} only, header first.")
            if getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
                logger.warning(
                    "Warning: DJANGO_TRUST_PROXY_HEADERS is set, but X-Forwarded-* headers are "
                    "never believed on TLS connections (nothing between a TLS client and this "
                    "server can have written them). Behind a TCP load balancer use "
                    "--proxy-protocol; behind an HTTP proxy, --plain."
                )
        webroot = self._acme_webroot(options["acme_webroot"], http_port)
        if http_port is not None:
            redirect = redirect_endpoint(
                http_port, port, host, reuse_port=True, acme_webroot=webroot
            )
            endpoints += ["-e", redirect]
            self._log(f"Redirecting http://{shown}:{http_port}/ to HTTPS.")
            if webroot is not None:
                self._log(f"Serving ACME challenges from {webroot}.")
        ping = ping_interval(options["ping_interval"])
        supervisor = Supervisor(
            [*WORKER_COMMAND, *endpoints, *ping, daphne_application()],
            workers,
            cwd=conf.BASE_DIR or Path.cwd(),
            grace=options["grace"],
            log=self._log,
            listen_on=[(host, each) for each in ports],
        )
        supervisor.run()

    def _check_descriptors(self, plain: bool) -> None:
        limit = raise_to_hard_limit()
        # Behind an HTTP proxy every connection comes from the proxy: no per-address TCP cap.
        warning = None if plain else too_few_for(limit, conf.REALTIME_MAX_CONNECTIONS_PER_ADDRESS)
        if warning:
            logger.warning("Warning: %s", warning)

    def _log(self, line: str) -> None:
        # Through logging, as the workers' own lines: one format (text or JSON) for the lot;
        # on stdout as it is when the project's LOGGING would drop it.
        if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
            logger.info("%s", line)
        else:
            self.stdout.write(line)
            self.stdout.flush()

    @staticmethod
    def _check_plain(options: dict[str, Any]) -> None:
        """Plain workers only make sense behind a proxy whose headers are trusted: without
        them every WebSocket would be refused as not secure (REALTIME_REQUIRE_TLS) and every
        client would share the proxy's address."""
        for option in ("cert", "key", "redirect_http", "acme_webroot", "proxy_protocol"):
            if options[option]:
                flag = "--" + option.replace("_", "-")
                raise CommandError(
                    f"{flag} does not go with --plain: the proxy holds TLS and sends "
                    "X-Forwarded-For."
                )
        if getattr(settings, "SECURE_PROXY_SSL_HEADER", None) is None:
            raise CommandError(
                "--plain needs DJANGO_TRUST_PROXY_HEADERS=1 (SECURE_PROXY_SSL_HEADER): the "
                "workers learn from the proxy's X-Forwarded-Proto and X-Forwarded-For that "
                "a client came over TLS, and from where (believed from REALTIME_TRUSTED_PROXIES "
                "only). Only for workers the proxy alone can reach (--host 127.0.0.1)."
            )

    def _wait_for_services(self, seconds: float) -> None:
        """Start only with a database and Redis that answer (workers would start "ready" and
        serve pages that cannot work), waiting up to `seconds` for them."""
        deadline = time.monotonic() + seconds
        said = False
        while problems := services_down():
            if time.monotonic() >= deadline:
                several = len(problems) > 1
                raise CommandError(
                    f"Not starting: {' and '.join(problems)} {'are' if several else 'is'} not "
                    f"answering. Start {'them' if several else 'it'}, or let serve wait with "
                    "--wait-for-services SECONDS."
                )
            if not said:
                self._log(f"Waiting up to {seconds:g} s for {' and '.join(problems)}...")
                said = True
            time.sleep(1)

    @staticmethod
    def _acme_webroot(given: str | None, http_port: int | None) -> Path | None:
        """The ACME webroot: --acme-webroot, else REALTIME_ACME_WEBROOT; checked here so that
        a typo is one clear error, not workers that keep dying."""
        chosen = given or conf.REALTIME_ACME_WEBROOT
        if not chosen:
            return None
        if http_port is None:
            if given:
                raise CommandError("--acme-webroot needs --redirect-http PORT (usually 80).")
            return None  # the setting applies whenever the redirect listener runs
        webroot = Path(chosen).resolve()
        if not webroot.is_dir():
            raise CommandError(f"The ACME webroot {webroot} is not a directory.")
        return webroot

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
