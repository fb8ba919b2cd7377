"""realtime.management.certificates: what `runserver --tls` and `serve` serve, and their
answers to mistakes, given before any server starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import CommandError

from realtime.management.certificates import serving_certificate
from realtime.tls.devca import ensure_dev_certificate


def test_without_files_the_dev_certificate_is_created_and_announced(tmp_path: Path, settings):
    settings.REALTIME_CERT_DIR = tmp_path
    said: list[str] = []
    cert, key = serving_certificate(None, None, said.append)
    assert (cert, key) == (tmp_path / "localhost.pem", tmp_path / "localhost-key.pem")
    assert said[0].startswith(f"Issued development certificate {cert}")
    assert "Created a development CA" in said[1]
    said.clear()
    assert serving_certificate(None, None, said.append) == (cert, key)
    assert len(said) == 1  # kept: no new CA
    assert said[0].startswith(f"Using development certificate {cert} (valid until ")


def test_given_files_are_served_after_loading_them(tmp_path: Path):
    paths = ensure_dev_certificate(tmp_path / "certs", ["localhost"]).paths
    said: list[str] = []
    assert serving_certificate(str(paths.cert), str(paths.key), said.append) == (
        paths.cert,
        paths.key,
    )
    assert said == []


def test_both_files_or_neither():
    with pytest.raises(CommandError, match="Give both --cert and --key"):
        serving_certificate("cert.pem", None, None)


def test_a_missing_file_is_named(tmp_path: Path):
    paths = ensure_dev_certificate(tmp_path / "certs", ["localhost"]).paths
    missing = tmp_path / "nope.pem"
    with pytest.raises(CommandError, match=f"Cannot read the certificate file {missing}"):
        serving_certificate(str(missing), str(paths.key), None)


def test_a_key_of_another_certificate_is_refused(tmp_path: Path):
    first = ensure_dev_certificate(tmp_path / "one", ["localhost"]).paths
    second = ensure_dev_certificate(tmp_path / "two", ["localhost"]).paths
    with pytest.raises(CommandError, match="does not belong to"):
        serving_certificate(str(first.cert), str(second.key), None)


def test_an_unknown_tls_profile_is_refused_before_serving(tmp_path: Path, settings):
    settings.REALTIME_TLS_PROFILE = "legacy"
    paths = ensure_dev_certificate(tmp_path / "certs", ["localhost"]).paths
    with pytest.raises(CommandError, match="legacy"):
        serving_certificate(str(paths.cert), str(paths.key), None)
