"""Unit tests of realtime.tls.devca: the development CA, the server certificate and endpoints."""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from realtime.common.endpoint_strings import escape_endpoint_value
from realtime.tls.devca import (
    DEFAULT_HOSTS,
    DevCertError,
    DevCertPaths,
    DevCertResult,
    ensure_dev_certificate,
    leaf_names,
    ssl_endpoint,
    trust_instructions,
)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ext(cert: x509.Certificate, kind: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def snapshot(paths: DevCertPaths) -> dict[str, bytes]:
    files = (paths.ca_cert, paths.ca_key, paths.cert, paths.key)
    return {path.name: path.read_bytes() for path in files}


def verify(ca: Path, leaf: Path, name: x509.GeneralName, when: datetime | None = None) -> None:
    builder = PolicyBuilder().store(Store([load(ca)]))
    if when is not None:
        builder = builder.time(when)
    builder.build_server_verifier(name).verify(load(leaf), [])


@pytest.fixture
def created(tmp_path: Path) -> DevCertResult:
    return ensure_dev_certificate(tmp_path / "certs")


def test_it_creates_the_ca_and_the_leaf(created: DevCertResult) -> None:
    assert created.ca_created and created.leaf_issued
    assert created.reason == "missing"
    assert created.paths == DevCertPaths.in_dir(created.paths.cert.parent)
    names = sorted(p.name for p in created.paths.cert.parent.iterdir())
    assert names == ["dev-ca-key.pem", "dev-ca.pem", "localhost-key.pem", "localhost.pem"]


def test_it_makes_a_p256_ca_with_ca_extensions(created: DevCertResult) -> None:
    ca = load(created.paths.ca_cert)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.public_key().curve, ec.SECP256R1)
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.startswith(
        "realtime development CA"
    )
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "realtime dev CA"
    )
    basic = ext(ca, x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ext(ca, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert ext(ca, x509.SubjectKeyIdentifier).value.digest
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=3650) <= lifetime <= timedelta(days=3651)
    ca.verify_directly_issued_by(ca)


def test_it_makes_a_p256_server_leaf_of_at_most_365_days(created: DevCertResult) -> None:
    ca, leaf = load(created.paths.ca_cert), load(created.paths.cert)
    assert isinstance(leaf.public_key().curve, ec.SECP256R1)
    assert leaf.signature_hash_algorithm.name == "sha256"
    assert leaf.issuer == ca.subject
    now = datetime.now(UTC)
    assert leaf.not_valid_after_utc - now <= timedelta(days=365)
    assert leaf.not_valid_after_utc - now > timedelta(days=364)
    assert timedelta(minutes=59) <= now - leaf.not_valid_before_utc <= timedelta(hours=2)
    basic = ext(leaf, x509.BasicConstraints)
    assert basic.critical and not basic.value.ca
    usage = ext(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = ext(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert ext(leaf, x509.SubjectKeyIdentifier).value.digest
    leaf.verify_directly_issued_by(ca)


def test_it_puts_names_and_ip_addresses_in_the_san(created: DevCertResult) -> None:
    san = ext(load(created.paths.cert), x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert leaf_names(created.paths.cert) == list(DEFAULT_HOSTS)


@pytest.mark.parametrize(
    "name",
    [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ],
)
def test_it_issues_a_leaf_that_verifies_against_the_ca(
    created: DevCertResult, name: x509.GeneralName
) -> None:
    verify(created.paths.ca_cert, created.paths.cert, name)


def test_it_issues_a_leaf_that_does_not_verify_for_other_names(created: DevCertResult) -> None:
    with pytest.raises(x509.verification.VerificationError):
        verify(created.paths.ca_cert, created.paths.cert, x509.DNSName("example.com"))


def test_it_writes_private_keys_0600_and_certificates_0644(created: DevCertResult) -> None:
    paths = created.paths
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.ca_cert.stat().st_mode) == 0o644
    assert stat.S_IMODE(paths.cert.stat().st_mode) == 0o644
    for key in (paths.ca_key, paths.key):
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8, clear


def test_it_tightens_a_world_readable_key_without_changing_it(created: DevCertResult) -> None:
    before = snapshot(created.paths)
    created.paths.key.chmod(0o644)
    created.paths.ca_key.chmod(0o640)
    ensure_dev_certificate(created.paths.cert.parent)
    assert stat.S_IMODE(created.paths.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(created.paths.ca_key.stat().st_mode) == 0o600
    assert snapshot(created.paths) == before


def test_it_keeps_everything_byte_identical_on_a_rerun(created: DevCertResult) -> None:
    before = snapshot(created.paths)
    again = ensure_dev_certificate(created.paths.cert.parent)
    assert not again.ca_created and not again.leaf_issued
    assert again.reason.startswith("valid until ")
    assert again.reason.endswith("covers localhost, 127.0.0.1, ::1")
    assert snapshot(created.paths) == before
    assert len(list(created.paths.cert.parent.iterdir())) == 4  # no temporary files left


def test_it_reissues_for_a_new_host_and_keeps_old_names_and_the_ca(
    created: DevCertResult,
) -> None:
    cert_dir = created.paths.cert.parent
    before = snapshot(created.paths)
    added = ensure_dev_certificate(cert_dir, ["app.test", "[::1]", "10.0.0.5"])
    assert added.leaf_issued and not added.ca_created
    assert added.reason == "lacks names: app.test, 10.0.0.5"
    after = snapshot(created.paths)
    assert after["dev-ca.pem"] == before["dev-ca.pem"]
    assert after["dev-ca-key.pem"] == before["dev-ca-key.pem"]
    assert after["localhost.pem"] != before["localhost.pem"]
    assert after["localhost-key.pem"] != before["localhost-key.pem"]
    assert leaf_names(created.paths.cert) == [*DEFAULT_HOSTS, "app.test", "10.0.0.5"]
    verify(created.paths.ca_cert, created.paths.cert, x509.DNSName("app.test"))

    without = ensure_dev_certificate(cert_dir, ["other.test"])
    assert without.reason == "lacks names: other.test"
    assert leaf_names(created.paths.cert) == [*DEFAULT_HOSTS, "other.test", "app.test", "10.0.0.5"]
    kept = ensure_dev_certificate(cert_dir)
    assert not kept.leaf_issued and "app.test" in kept.reason


def test_it_reissues_a_leaf_close_to_expiry(tmp_path: Path) -> None:
    start = datetime.now(UTC)
    first = ensure_dev_certificate(tmp_path, ["app.test"], now=start)
    ca_before = first.paths.ca_cert.read_bytes()
    assert not ensure_dev_certificate(tmp_path, now=start + timedelta(days=300)).leaf_issued
    later = start + timedelta(days=350)
    renewed = ensure_dev_certificate(tmp_path, now=later)
    assert renewed.leaf_issued and not renewed.ca_created
    assert renewed.reason == "expires in 15 days"
    assert first.paths.ca_cert.read_bytes() == ca_before
    assert load(first.paths.cert).not_valid_after_utc > later + timedelta(days=364)
    assert "app.test" in leaf_names(first.paths.cert)
    verify(first.paths.ca_cert, first.paths.cert, x509.DNSName("localhost"), when=later)


def test_it_reissues_an_expired_leaf(tmp_path: Path) -> None:
    start = datetime.now(UTC)
    ensure_dev_certificate(tmp_path, now=start)
    result = ensure_dev_certificate(tmp_path, now=start + timedelta(days=400))
    assert result.leaf_issued and result.reason.startswith("expired on ")


def test_it_reissues_a_leaf_signed_by_another_ca(tmp_path: Path) -> None:
    ours = ensure_dev_certificate(tmp_path / "ours").paths
    theirs = ensure_dev_certificate(tmp_path / "theirs").paths
    shutil.copyfile(theirs.cert, ours.cert)
    shutil.copyfile(theirs.key, ours.key)
    result = ensure_dev_certificate(tmp_path / "ours")
    assert result.leaf_issued and not result.ca_created
    assert result.reason == "not signed by the current development CA"
    verify(ours.ca_cert, ours.cert, x509.DNSName("localhost"))


def test_it_reissues_when_the_leaf_key_is_missing(created: DevCertResult) -> None:
    created.paths.key.unlink()
    result = ensure_dev_certificate(created.paths.cert.parent)
    assert result.leaf_issued and result.reason == "missing"
    assert stat.S_IMODE(created.paths.key.stat().st_mode) == 0o600


def test_it_refuses_a_ca_without_its_key(created: DevCertResult) -> None:
    created.paths.ca_key.unlink()
    before = created.paths.cert.read_bytes()
    with pytest.raises(DevCertError, match=r"Remove .*dev-ca\.pem to start over"):
        ensure_dev_certificate(created.paths.cert.parent)
    assert created.paths.cert.read_bytes() == before
    assert not created.paths.ca_key.exists()


def test_it_rejects_an_invalid_host_name(tmp_path: Path) -> None:
    with pytest.raises(DevCertError, match="not a valid host name"):
        ensure_dev_certificate(tmp_path, ["bad name"])


def test_it_escapes_endpoint_values() -> None:
    assert escape_endpoint_value(r"C:\certs\a=b.pem") == r"C\:\\certs\\a\=b.pem"
    assert escape_endpoint_value("plain/path.pem") == "plain/path.pem"


def test_it_builds_an_ssl_endpoint() -> None:
    endpoint = ssl_endpoint(8443, Path("certs/localhost.pem"), Path("certs/localhost-key.pem"))
    assert endpoint == "ssl:8443:privateKey=certs/localhost-key.pem:certKey=certs/localhost.pem"


@pytest.mark.parametrize("interface", ["::1", "[::1]"])
def test_it_escapes_an_ipv6_interface_and_paths_with_colons(interface: str) -> None:
    endpoint = ssl_endpoint(443, Path("/srv/a:b/cert.pem"), Path("/srv/a:b/key.pem"), interface)
    assert endpoint == (
        r"ssl:443:privateKey=/srv/a\:b/key.pem:certKey=/srv/a\:b/cert.pem:interface=\:\:1"
    )


@pytest.mark.parametrize("port", [-1, 65536, "8443", True])
def test_it_rejects_bad_ports(port: object) -> None:
    with pytest.raises(ValueError, match="port"):
        ssl_endpoint(port, Path("c.pem"), Path("k.pem"))  # type: ignore[arg-type]


def test_it_makes_an_endpoint_twisted_parses(tmp_path: Path) -> None:
    """The escaped string loads the real files through Twisted's own endpoint parser."""
    from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString

    paths = ensure_dev_certificate(tmp_path / "dir:with=odd\\chars").paths
    description = ssl_endpoint(0, paths.cert, paths.key, "[::1]")
    endpoint = serverFromString(object(), description)  # the reactor is only stored
    assert isinstance(endpoint, SSL4ServerEndpoint)
    assert endpoint._interface == "::1"
    assert endpoint._port == 0


def test_it_explains_how_to_trust_the_ca(tmp_path: Path) -> None:
    text = trust_instructions(tmp_path / "dev-ca.pem")
    ca = str(tmp_path / "dev-ca.pem")
    assert f"sudo cp {ca} /usr/local/share/ca-certificates/realtime-dev-ca.crt" in text
    assert "sudo update-ca-certificates" in text
    assert "security add-trusted-cert -d -r trustRoot" in text
    assert "/Library/Keychains/System.keychain" in text
    assert 'certutil -d sql:$HOME/.pki/nssdb -A -t "C,," -n realtime-dev-ca -i' in text
    assert "SSL_CERT_FILE" in text and "create_default_context(cafile=" in text
    assert "Never share dev-ca-key.pem" in text
    assert "PRIVATE KEY" not in text


# --- A real TLS handshake ----------------------------------------------------------------------


@contextlib.contextmanager
def tls_server(paths: DevCertPaths) -> Iterator[tuple[int, list[Exception]]]:
    """Serve one TLS connection on 127.0.0.1 with the leaf; yields (port, server errors)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths.cert, paths.key)
    errors: list[Exception] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            errors.append(exc)
            return
        with conn:
            conn.settimeout(10)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(GREETING)
            except OSError as exc:  # ssl.SSLError included
                errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], errors
    finally:
        thread.join(15)
        listener.close()


GREETING = b"hello over verified tls"


def fetch(port: int, context: ssl.SSLContext, server_hostname: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        data = b""
        while len(data) < len(GREETING) and (chunk := tls.recv(1024)):
            data += chunk
        return data


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_it_completes_a_real_handshake_when_the_ca_is_trusted(
    created: DevCertResult, server_hostname: str
) -> None:
    client = ssl.create_default_context(cafile=str(created.paths.ca_cert))
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    with tls_server(created.paths) as (port, errors):
        assert fetch(port, client, server_hostname) == GREETING
    assert errors == []


def test_it_fails_verification_with_the_system_trust_store(created: DevCertResult) -> None:
    client = ssl.create_default_context()
    with (
        tls_server(created.paths) as (port, errors),
        pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"),
    ):
        fetch(port, client, "localhost")
    assert errors and all(isinstance(exc, OSError) for exc in errors)
