"""`manage.py devcert`: create or renew the local development CA and HTTPS certificate.

A thin wrapper around `realtime.tls.devca.ensure_dev_certificate()`; it prints what happened and
how to trust the CA. Private keys are written to disk, never printed.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from django.core.management import BaseCommand, CommandError, CommandParser

from realtime.conf import conf
from realtime.management import daphne_application
from realtime.server.endpoints import realtime_endpoint
from realtime.tls.devca import (
    DevCertError,
    DevCertResult,
    certificate_expiry,
    ensure_dev_certificate,
    leaf_names,
    trust_instructions,
)


class Command(BaseCommand):
    help = (
        "Create (once) a local development CA and keep a server certificate signed by it for "
        "localhost, 127.0.0.1, ::1 and any --host names. Renews it when it expires within 30 "
        "days, lacks a name or was signed by another CA; otherwise leaves the files alone."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host",
            action="append",
            default=[],
            metavar="NAME",
            help="Extra DNS name or IP address for the certificate (repeatable).",
        )
        parser.add_argument(
            "--dir",
            type=Path,
            default=None,
            help="Directory for the certificate files (default: conf.REALTIME_CERT_DIR).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        cert_dir = Path(options["dir"] or conf.REALTIME_CERT_DIR)
        try:
            result = ensure_dev_certificate(cert_dir, options["host"])
        except DevCertError as exc:
            raise CommandError(str(exc)) from None
        self.report(result)
        self.stdout.write("")
        self.stdout.write(trust_instructions(result.paths.ca_cert))

    def report(self, result: DevCertResult) -> None:
        paths = result.paths
        ca_verb = "created" if result.ca_created else "kept"
        self.stdout.write(f"Development CA {ca_verb}: {paths.ca_cert} (key {paths.ca_key})")
        if result.leaf_issued:
            self.stdout.write(self.style.SUCCESS(f"Certificate issued ({result.reason})."))
        else:
            self.stdout.write(f"Kept the existing certificate ({result.reason}).")
        expiry = certificate_expiry(paths.cert)
        self.stdout.write(f"  certificate: {paths.cert}")
        self.stdout.write(f"  private key: {paths.key}")
        self.stdout.write(f"  names:       {', '.join(leaf_names(paths.cert))}")
        self.stdout.write(f"  expires:     {expiry:%Y-%m-%d %H:%M} UTC")
        self.stdout.write("")
        self.stdout.write(
            "Serve it with `manage.py runserver --tls`, or with daphne from the project root:"
        )
        endpoint = shlex.quote(realtime_endpoint(8443, paths.cert, paths.key))
        has_application = conf.ASGI_APPLICATION
        application = daphne_application() if has_application else "<ASGI_APPLICATION>"
        self.stdout.write(f"  daphne -e {endpoint} {application}")
