"""The certificate `runserver --tls` and `serve` serve: --cert and --key, or the dev one.

Both commands take the same options (`add_certificate_options`: --cert, --key and
--redirect-http) and answer mistakes the same way, before anything starts:
both files or neither, files that exist, a key that belongs to the certificate and a valid
REALTIME_TLS_PROFILE (checked by loading them as each server process will).
"""

from __future__ import annotations

from argparse import ArgumentParser
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.core.management import CommandError

from realtime.conf import conf
from realtime.server.endpoints import server_tls_options
from realtime.tls.devca import DevCertError, certificate_names, ensure_dev_certificate


def add_certificate_options(parser: ArgumentParser, only_with: str = "") -> None:
    """--cert, --key and --redirect-http; `only_with` starts their help ("With --tls: ")."""
    parser.add_argument(
        "--cert", help=f"{only_with}PEM certificate, optionally followed by its chain."
    )
    parser.add_argument("--key", help=f"{only_with}PEM private key of --cert.")
    parser.add_argument(
        "--redirect-http",
        type=int,
        metavar="PORT",
        help=f"{only_with}Also listen for plain HTTP on PORT (e.g. 80) and redirect it to HTTPS.",
    )


def serving_certificate(
    cert: str | None, key: str | None, say: Callable[[str], object] | None
) -> tuple[Path, Path]:
    """The given certificate and key, or the dev certificate for ALLOWED_HOSTS in
    REALTIME_CERT_DIR, created or renewed when needed and announced through `say`."""
    if bool(cert) != bool(key):
        raise CommandError("Give both --cert and --key, or neither to use the dev certificate.")
    files = (Path(cert), Path(key)) if cert and key else dev_certificate(say)
    try:
        server_tls_options(*files, profile=conf.REALTIME_TLS_PROFILE)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return files


def dev_certificate(say: Callable[[str], object] | None) -> tuple[Path, Path]:
    try:
        result = ensure_dev_certificate(
            conf.REALTIME_CERT_DIR, certificate_names(settings.ALLOWED_HOSTS)
        )
    except DevCertError as exc:
        raise CommandError(str(exc)) from exc
    if say is not None:
        verb = "Issued" if result.leaf_issued else "Using"
        say(f"{verb} development certificate {result.paths.cert} ({result.reason}).")
        if result.ca_created:
            say("Created a development CA: run `manage.py devcert` to see how to trust it.")
    return result.paths.cert, result.paths.key
