"""The TLS profiles: their data against Mozilla's guidelines, the OpenSSL context they give, and
sslyze's verdict on real servers (`serve`, `runserver --tls`, plain daphne with `realtime:`).

The pure tests handshake in memory (no sockets) with a verifying stdlib client. The sslyze
tests scan servers started here, trusting the test's own dev CA through sslyze's
`--certinfo_ca_file`; a control run shows that the stock `ssl:` endpoint fails the same check.
sslyze lives in its own virtualenv (.venv/sslyze, requirements-sslyze.txt): it needs an older
cryptography than the project's.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

from realtime.server.endpoints import realtime_endpoint, server_tls_options
from realtime.tls.devca import DevCertPaths, ensure_dev_certificate
from realtime.tls.profiles import POST_QUANTUM_GROUPS, PROFILES, tls_profile
from realtime.upstream import set_key_exchange_groups
from tests.helpers import DAPHNE, PYTHON, ROOT, daphne_tls_args, free_port

SSLYZE = Path(sys.executable).parents[1] / "sslyze" / "bin" / "python"
SSLYZE_TIMEOUT = 90  # a scan of one local server takes about a second
MOZILLA_CURVE_NAMES = {"X25519": "X25519", "P-256": "prime256v1", "P-384": "secp384r1"}


def sslyze_python() -> Path:
    if not SSLYZE.is_file():
        pytest.fail(f"{SSLYZE} is missing: `make test` installs requirements-sslyze.lock there")
    return SSLYZE


def mozilla_guidelines() -> dict:
    """Mozilla's Server Side TLS 5.7, as shipped with (and checked by) sslyze."""
    code = "import sslyze, pathlib; print(pathlib.Path(sslyze.__file__).parent)"
    package = subprocess.run(
        [sslyze_python(), "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    path = Path(package) / "mozilla_tls_profile" / "5.7.json"
    return json.loads(path.read_text())["configurations"]


# --- The profiles as data --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_profile_stays_within_mozillas_guidelines(name):
    profile, mozilla = PROFILES[name], mozilla_guidelines()[name]
    assert set(profile.versions) == set(mozilla["tls_versions"])
    assert set(profile.tls12_ciphers) <= set(mozilla["ciphers"]["openssl"])
    assert set(profile.tls13_ciphersuites) == set(mozilla["ciphersuites"])
    classic = [group for group in profile.groups if group not in POST_QUANTUM_GROUPS]
    assert {MOZILLA_CURVE_NAMES[group] for group in classic} <= set(mozilla["tls_curves"])
    assert profile.groups[0] == "X25519MLKEM768"  # newer than the guidelines, offered first
    assert profile.server_cipher_preference == mozilla["server_preferred_order"]


def test_intermediate_allows_only_ecdhe_with_aead_ciphers_on_tls_1_2():
    ciphers = PROFILES["intermediate"].tls12_ciphers
    assert ciphers and all(c.startswith("ECDHE-") for c in ciphers)
    assert all(c.endswith(("-GCM-SHA256", "-GCM-SHA384", "-CHACHA20-POLY1305")) for c in ciphers)


def test_modern_is_tls_1_3_only():
    assert PROFILES["modern"].versions == ("TLSv1.3",)
    assert PROFILES["modern"].tls12_ciphers == ()


def test_an_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match="REALTIME_TLS_PROFILE must be intermediate or modern"):
        tls_profile("old", what="REALTIME_TLS_PROFILE")


def test_the_endpoint_builder_adds_the_profile():
    endpoint = realtime_endpoint(8443, "c.pem", "k.pem", "127.0.0.1", profile="modern")
    assert (
        endpoint
        == "realtime:8443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1:profile=modern"
    )
    with pytest.raises(ValueError, match="must be intermediate or modern, not 'old'"):
        realtime_endpoint(8443, "c.pem", "k.pem", profile="old")


def test_the_endpoint_parser_refuses_an_unknown_profile(dev_certs: DevCertPaths):
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    description = f"realtime:0:privateKey={dev_certs.key}:certKey={dev_certs.cert}:profile=old"
    with pytest.raises(ValueError, match="realtime: profile must be intermediate or modern"):
        serverFromString(MemoryReactor(), description)


# --- The OpenSSL context, handshaking in memory ---------------------------------------------


def context_options(profile: str, certs: DevCertPaths) -> int:
    context = server_tls_options(certs.cert, certs.key, profile=profile).getContext()
    return Binding.lib.SSL_CTX_get_options(context._context)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_context_has_no_compression_no_renegotiation_and_client_order(profile, dev_certs):
    options = context_options(profile, dev_certs)
    assert options & SSL.OP_NO_COMPRESSION
    assert options & SSL.OP_NO_RENEGOTIATION
    assert options & SSL.OP_NO_TLSv1 and options & SSL.OP_NO_TLSv1_1
    assert not options & SSL.OP_CIPHER_SERVER_PREFERENCE
    assert bool(options & SSL.OP_NO_TLSv1_2) == (profile == "modern")


def handshake(profile: str, certs: DevCertPaths, client: ssl.SSLContext) -> tuple[str, str]:
    """A full handshake in memory: a verifying stdlib client against the profile's server.

    Returns the negotiated (version, cipher); raises ssl.SSLError when the server refuses.
    """
    server = SSL.Connection(server_tls_options(certs.cert, certs.key, profile=profile).getContext())
    server.set_accept_state()
    to_client, to_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(to_client, to_server, server_hostname="localhost")
    for _ in range(10):
        try:
            tls.do_handshake()
            return tls.version(), tls.cipher()[0]
        except ssl.SSLWantReadError:
            pass
        server.bio_write(to_server.read())
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error:
            pass  # the refusal is on its way to the client as an alert
        to_client.write(server_output(server))
    raise AssertionError("the in-memory handshake did not finish")


def server_output(server: SSL.Connection) -> bytes:
    data = b""
    while True:
        try:
            data += server.bio_read(65536)
        except SSL.WantReadError:
            return data


def client_context(certs: DevCertPaths, **settings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    for name, value in settings.items():
        if name == "ciphers":
            context.set_ciphers(value)
        elif name == "curve":
            context.set_ecdh_curve(value)
        else:
            setattr(context, name, value)
    return context


def test_intermediate_serves_tls_1_3_and_aead_tls_1_2(dev_certs):
    assert handshake("intermediate", dev_certs, client_context(dev_certs))[0] == "TLSv1.3"
    tls12 = client_context(dev_certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert handshake("intermediate", dev_certs, tls12) == (
        "TLSv1.2",
        "ECDHE-ECDSA-AES256-GCM-SHA384",  # the client's first choice: client order
    )


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"])
def test_intermediate_refuses_cbc_cipher_suites(dev_certs, cipher):
    client = client_context(dev_certs, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers=cipher)
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        handshake("intermediate", dev_certs, client)


@pytest.mark.parametrize("curve", ["secp521r1", "X448"])
def test_curves_outside_the_profile_are_refused(dev_certs, curve):
    client = client_context(dev_certs, curve=curve)
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        handshake("intermediate", dev_certs, client)


@pytest.mark.parametrize("curve", ["X25519", "prime256v1", "secp384r1"])
def test_the_profiles_curves_are_served(dev_certs, curve):
    assert handshake("modern", dev_certs, client_context(dev_certs, curve=curve))[0] == "TLSv1.3"


def post_quantum_client(certs: DevCertPaths, groups: list[str]) -> SSL.Connection:
    """A pyOpenSSL client (the OpenSSL cryptography bundles; the stdlib's is too old for ML-KEM)."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(str(certs.ca_cert))
    context.set_verify(SSL.VERIFY_PEER)
    set_key_exchange_groups(context, ":".join(groups))
    client = SSL.Connection(context)
    client.set_tlsext_host_name(b"localhost")
    client.set_connect_state()
    return client


def handshake_with(server: SSL.Connection, client: SSL.Connection) -> int:
    """Finish a handshake in memory; returns how many flights the client sent."""
    for flights in range(10):
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        else:
            return flights
        server.bio_write(client.bio_read(65536))
        with contextlib.suppress(SSL.WantReadError):
            server.do_handshake()
        client.bio_write(server_output(server))
    raise AssertionError("the in-memory handshake did not finish")


def profile_server(profile: str, certs: DevCertPaths) -> SSL.Connection:
    server = SSL.Connection(server_tls_options(certs.cert, certs.key, profile=profile).getContext())
    server.set_accept_state()
    return server


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_client_offering_only_x25519mlkem768_gets_it(dev_certs, profile):
    server = profile_server(profile, dev_certs)
    client = post_quantum_client(dev_certs, ["X25519MLKEM768"])
    handshake_with(server, client)
    assert server.get_group_name() == client.get_group_name() == "X25519MLKEM768"


def test_the_hybrid_wins_over_the_clients_order_and_others_get_no_retry(dev_certs):
    # A client preferring X25519 that sends both key shares still gets the hybrid.
    server = profile_server("intermediate", dev_certs)
    client = post_quantum_client(dev_certs, ["*X25519", "*X25519MLKEM768"])
    assert handshake_with(server, client) == 1
    assert server.get_group_name() == "X25519MLKEM768"
    # One that offers it without a key share is asked for one (HelloRetryRequest: two flights).
    server = profile_server("intermediate", dev_certs)
    client = post_quantum_client(dev_certs, ["X25519", "X25519MLKEM768"])
    assert handshake_with(server, client) == 2
    assert server.get_group_name() == "X25519MLKEM768"
    # A client without it gets X25519 in one flight: no retry for the classic groups.
    server = profile_server("intermediate", dev_certs)
    client = post_quantum_client(dev_certs, ["X25519", "P-256"])
    assert handshake_with(server, client) == 1
    assert server.get_group_name() == "x25519"


def test_modern_refuses_tls_1_2(dev_certs):
    client = client_context(dev_certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
        handshake("modern", dev_certs, client)


# --- sslyze against real servers -------------------------------------------------------------


def sslyze(port: int, config: str, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sslyze_python(),
            "-m",
            "sslyze",
            f"--mozilla_config={config}",
            f"--certinfo_ca_file={ca}",
            f"localhost:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=SSLYZE_TIMEOUT,
    )


def assert_compliant(port: int, config: str, ca: Path) -> str:
    result = sslyze(port, config, ca)
    # sslyze also exits 0 when it could not reach the server: its verdict is in the text.
    verdict = f"localhost:{port}: OK - Compliant."
    assert result.returncode == 0 and verdict in result.stdout, result.stdout + result.stderr
    assert f'Mozilla\'s "{config}" configuration' in result.stdout
    return result.stdout


@pytest.fixture(scope="module")
def modern_certs(tmp_path_factory) -> DevCertPaths:
    """A dev CA and a 90-day leaf: "modern" also caps a certificate's lifespan at 90 days."""
    cert_dir = tmp_path_factory.mktemp("modern-certs")
    return ensure_dev_certificate(cert_dir, leaf_validity=timedelta(days=90)).paths


def serve_args(port: int, certs: DevCertPaths) -> list[str]:
    tls = ["--cert", str(certs.cert), "--key", str(certs.key)]
    return [PYTHON, "manage.py", "serve", "--port", str(port), *tls]


def test_serve_passes_mozilla_intermediate(start, dev_certs):
    port = free_port()
    server = start(serve_args(port, dev_certs), port)
    output = assert_compliant(port, "intermediate", dev_certs.ca_cert)
    assert "Supported curves:                  X25519, secp256r1, secp384r1" in output
    assert "TLS profile intermediate" in server.log()


def test_serve_passes_mozilla_modern_with_realtime_tls_profile_modern(start, modern_certs):
    port = free_port()
    server = start(serve_args(port, modern_certs), port, REALTIME_TLS_PROFILE="modern")
    output = assert_compliant(port, "modern", modern_certs.ca_cert)
    assert "TLS 1.2 Cipher Suites:" in output and "the server rejected all cipher suites" in output
    assert "profile=modern" in server.log()


def test_runserver_tls_passes_mozilla_intermediate(start, dev_certs):
    port = free_port()
    start([PYTHON, "manage.py", "runserver", "--tls", f"127.0.0.1:{port}"], port)
    assert_compliant(port, "intermediate", dev_certs.ca_cert)


@pytest.mark.parametrize(
    ("profile", "config"), [(None, "intermediate"), ("modern", "modern")], ids=["default", "modern"]
)
def test_plain_daphne_with_the_documented_realtime_endpoint_passes(
    start, dev_certs, modern_certs, profile, config
):
    """The endpoint string of docs/tls.md, for people who run daphne directly."""
    certs = modern_certs if profile == "modern" else dev_certs
    port = free_port()
    endpoint = realtime_endpoint(port, certs.cert, certs.key, profile=profile)
    start([DAPHNE, "-e", endpoint, "project.asgi:application"], port)
    assert_compliant(port, config, certs.ca_cert)


def test_control_the_stock_ssl_endpoint_fails_intermediate(start, dev_certs):
    """The same check fails against daphne's stock `ssl:` endpoint, so it can fail at all."""
    port = free_port()
    start(daphne_tls_args(port, dev_certs), port)
    result = sslyze(port, "intermediate", dev_certs.ca_cert)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"localhost:{port}: FAILED - Not compliant." in result.stdout
    assert "_CBC_" in result.stdout and "X448" in result.stdout


def test_an_unknown_realtime_tls_profile_is_a_clear_error(server_env):
    result = subprocess.run(
        [PYTHON, "manage.py", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={**server_env, "REALTIME_TLS_PROFILE": "old"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "REALTIME_TLS_PROFILE must be intermediate or modern, not 'old'." in result.stderr
    assert "started" not in result.stdout
