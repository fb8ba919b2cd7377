"""What the browser tests share: headless Chromium (Debian's package) driven by Playwright,
the dev certificate for app.test trusted by its SPKI pin, a daphne over TLS, pages and
screenshots in test-artifacts/ (the fixtures `app_test_certs`, `https_server`, `browser` and
`page` are in tests/conftest.py). Importing this module skips the importing test module when
Chromium is missing (and fails it in CI, which installs it).

The pages are served under app.test, mapped to 127.0.0.1: Chromium treats localhost as
potentially trustworthy and would let an https page open ws://localhost, proving nothing.
The dev certificate is trusted through Chromium's SPKI allow-list for that one certificate;
certificate verification stays on for everything else.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.helpers import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
HOST = "app.test"  # tests/conftest.py: BROWSER_HOST

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail("CI needs /usr/bin/chromium: .ci/run installs Debian's chromium package")
    pytest.skip(
        "Chromium is missing: install it with `apt-get install chromium` (Debian's package)",
        allow_module_level=True,
    )

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402, F401 - for conftest


def spki_pin(cert_path: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a certificate, as Chromium's allow-list wants."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def open_page(page: Page, url: str, scheme: str) -> None:
    page.goto(url)
    connection = page.locator("#connection")
    expect(connection).to_have_attribute("data-state", "open", timeout=15_000)
    expect(connection).to_have_attribute("data-scheme", scheme)


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
