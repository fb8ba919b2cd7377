"""The devcert management command: creates, reports and keeps the development certificate."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command


def run_devcert(*args: str) -> str:
    out = io.StringIO()
    call_command("devcert", *args, stdout=out)
    return out.getvalue()


def test_it_creates_the_certificate_and_explains_how_to_trust_it(tmp_path: Path) -> None:
    output = run_devcert("--dir", str(tmp_path), "--host", "app.test")
    assert "Development CA created" in output
    assert "Certificate issued (missing)" in output
    assert "localhost, 127.0.0.1, ::1, app.test" in output
    assert str(tmp_path / "localhost.pem") in output
    assert str(tmp_path / "localhost-key.pem") in output
    assert "expires:" in output
    assert "update-ca-certificates" in output
    assert "security add-trusted-cert" in output
    assert "certutil -d sql:$HOME/.pki/nssdb" in output
    assert "SSL_CERT_FILE" in output
    assert "Never share dev-ca-key.pem" in output
    assert "PRIVATE KEY" not in output  # key material is never printed
    assert (tmp_path / "dev-ca.pem").exists() and (tmp_path / "localhost-key.pem").exists()


def test_it_keeps_the_certificate_on_a_second_run(tmp_path: Path) -> None:
    run_devcert("--dir", str(tmp_path), "--host", "app.test")
    before = (tmp_path / "localhost.pem").read_bytes()
    output = run_devcert("--dir", str(tmp_path))
    assert "Development CA kept" in output
    assert "Kept the existing certificate (valid until " in output
    assert "covers localhost, 127.0.0.1, ::1, app.test" in output
    assert (tmp_path / "localhost.pem").read_bytes() == before


def test_it_reissues_for_a_new_host(tmp_path: Path) -> None:
    run_devcert("--dir", str(tmp_path))
    output = run_devcert("--dir", str(tmp_path), "--host", "app.test", "--host", "10.1.2.3")
    assert "Certificate issued (lacks names: app.test, 10.1.2.3)" in output


def test_it_uses_the_cert_dir_setting_by_default(tmp_path: Path, settings) -> None:
    settings.REALTIME_CERT_DIR = tmp_path / "from-settings"
    output = run_devcert()
    assert str(tmp_path / "from-settings" / "localhost.pem") in output
    assert (tmp_path / "from-settings" / "dev-ca.pem").exists()


def test_it_turns_a_missing_ca_key_into_a_command_error(tmp_path: Path) -> None:
    run_devcert("--dir", str(tmp_path))
    (tmp_path / "dev-ca-key.pem").unlink()
    with pytest.raises(CommandError, match="dev-ca.pem to start over"):
        run_devcert("--dir", str(tmp_path))
