"""Let's Encrypt while the service holds port 80: the redirect listener answers ACME HTTP-01
challenges from certbot's webroot (`serve --redirect-http PORT --acme-webroot DIR`, or
REALTIME_ACME_WEBROOT) and redirects everything else; no other file is ever served."""

from __future__ import annotations

from pathlib import Path

import pytest

from realtime.server.redirect import acme_challenge, redirect_endpoint
from tests.helpers import free_port, wait_for_port
from tests.test_serve import run_serve, serve_args
from tests.test_serve_reload import plain_request

TOKEN = "Kx3_9-zZwT0kEn"
KEY_AUTHORIZATION = b"Kx3_9-zZwT0kEn.thumbprint-of-the-account-key"
SECRET = b"never served: a file beside the challenges"
TRAVERSALS = [
    "/.well-known/acme-challenge/../secret.txt",
    "/.well-known/acme-challenge/../../secret.txt",
    "/.well-known/acme-challenge/..%2Fsecret.txt",
    "/.well-known/acme-challenge/%2e%2e/secret.txt",
    "/.well-known/acme-challenge/..",
    "/.well-known/acme-challenge/.",
    "/.well-known/acme-challenge/",
    "/.well-known/acme-challenge/a/b",
    "/.well-known/acme-challenge/token.txt",
]


def make_webroot(root: Path) -> Path:
    """A webroot as `certbot certonly --webroot -w root` leaves it, plus files to protect."""
    challenges = root / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    (challenges / TOKEN).write_bytes(KEY_AUTHORIZATION)
    (challenges / "token.txt").write_bytes(SECRET)
    (root / ".well-known" / "secret.txt").write_bytes(SECRET)
    (root / "secret.txt").write_bytes(SECRET)
    return root


def test_a_challenge_is_read_from_the_webroot_and_nothing_else(tmp_path):
    webroot = make_webroot(tmp_path / "webroot")
    assert acme_challenge(webroot, f"/.well-known/acme-challenge/{TOKEN}".encode()) == (
        KEY_AUTHORIZATION
    )
    assert acme_challenge(webroot, b"/.well-known/acme-challenge/missing") is None
    assert acme_challenge(webroot, b"/elsewhere/" + TOKEN.encode()) is None
    for path in TRAVERSALS:
        assert acme_challenge(webroot, path.encode()) is None, path


def test_the_endpoint_string_carries_the_webroot():
    assert redirect_endpoint(80, 443, acme_webroot="/srv/acme:x") == (
        "realtime-redirect:80:httpsPort=443:acmeWebroot=/srv/acme\\:x"
    )


@pytest.fixture(scope="module")
def acme_site(start, tmp_path_factory):
    webroot = make_webroot(tmp_path_factory.mktemp("acme") / "webroot")
    port, http_port = free_port(), free_port()
    args = serve_args(port, 1, "--redirect-http", str(http_port), "--acme-webroot", str(webroot))
    server = start(args, port)
    wait_for_port(http_port, server.process, 30)
    return server, webroot, port, http_port


def test_serve_answers_a_challenge_on_the_http_port(acme_site):
    server, webroot, _, http_port = acme_site
    response = plain_request(http_port, path=f"/.well-known/acme-challenge/{TOKEN}")
    assert response.status == 200
    assert response.body == KEY_AUTHORIZATION
    assert f"Serving ACME challenges from {webroot}." in server.log()


def test_a_token_written_while_serving_is_answered(acme_site):
    _, webroot, _, http_port = acme_site
    (webroot / ".well-known" / "acme-challenge" / "later-token").write_bytes(b"later.auth")
    response = plain_request(http_port, path="/.well-known/acme-challenge/later-token")
    assert (response.status, response.body) == (200, b"later.auth")


@pytest.mark.parametrize("path", TRAVERSALS + ["/.well-known/acme-challenge/unknown"])
def test_no_other_file_is_served(acme_site, path):
    _, _, _, http_port = acme_site
    response = plain_request(http_port, path=path)
    assert response.status == 404
    assert SECRET not in response.body


def test_everything_else_is_still_redirected(acme_site):
    _, _, port, http_port = acme_site
    response = plain_request(http_port, path="/.well-known/other")
    assert response.status == 301
    assert response.getheader("Location") == f"https://localhost:{port}/.well-known/other"
    assert plain_request(http_port, "POST", f"/.well-known/acme-challenge/{TOKEN}").status == 405


def test_a_webroot_without_the_http_port_or_that_is_missing_is_refused(server_env, tmp_path):
    result = run_serve(server_env, "--acme-webroot", str(tmp_path))
    assert result.returncode != 0
    assert "--acme-webroot needs --redirect-http PORT" in result.stderr
    missing = tmp_path / "missing"
    result = run_serve(
        server_env, "--redirect-http", str(free_port()), "--acme-webroot", str(missing)
    )
    assert result.returncode != 0
    assert f"The ACME webroot {missing} is not a directory." in result.stderr


def test_the_setting_gives_the_webroot_too(start, tmp_path):
    webroot = make_webroot(tmp_path / "webroot")
    port, http_port = free_port(), free_port()
    args = serve_args(port, 1, "--redirect-http", str(http_port))
    server = start(args, port, REALTIME_ACME_WEBROOT=str(webroot))
    wait_for_port(http_port, server.process, 30)
    response = plain_request(http_port, path=f"/.well-known/acme-challenge/{TOKEN}")
    assert (response.status, response.body) == (200, KEY_AUTHORIZATION)
