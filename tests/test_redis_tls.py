"""Redis over TLS: a `rediss://` REDIS_URL with a password, verified against REDIS_CA_FILE.

A private `redis-server` listens only with TLS (`--port 0 --tls-port P`), with a certificate
from this module's own dev CA (realtime.tls.devca, in a temporary directory) and `--requirepass`.
daphne and `manage.py broadcast` reach it as a deployment would, through environment
variables; clients verify its certificate, and a wrong CA or password fails with a clear
message that never shows the password.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from realtime.tls.devca import DevCertPaths, ensure_dev_certificate
from tests.helpers import (
    PYTHON,
    ROOT,
    clients_in_presence,
    daphne_tls_args,
    free_port,
    receive_json,
    redis_args,
    wait_for_port,
    wait_until_async,
    ws_connect,
)

SECRET = "redis-" + secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def redis_ca(tmp_path_factory) -> DevCertPaths:
    """A CA of this module's own and a certificate for localhost and 127.0.0.1, for Redis."""
    return ensure_dev_certificate(tmp_path_factory.mktemp("redis-ca")).paths


def start_tls_redis(
    workdir: Path, certs: DevCertPaths, *options: str
) -> tuple[int, subprocess.Popen]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH (Debian package redis-server)")
    port = free_port()
    tls_only = [
        # Later options win in redis-server's command line: the plain port is turned off again.
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(certs.cert), "--tls-key-file", str(certs.key),
        "--tls-ca-cert-file", str(certs.ca_cert), "--requirepass", SECRET,
    ]  # fmt: skip
    process = subprocess.Popen(
        [*redis_args(port, workdir), *tls_only, *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, 10)
    except RuntimeError:
        pytest.fail("redis-server refused --tls-port: it was built without TLS")
    return port, process


@pytest.fixture(scope="module")
def redis_tls(tmp_path_factory, redis_ca) -> Iterator[int]:
    """A TLS-only Redis with a password; clients need no certificate of their own."""
    port, process = start_tls_redis(
        tmp_path_factory.mktemp("redis-tls"), redis_ca, "--tls-auth-clients", "no"
    )
    yield port
    process.terminate()
    process.wait(timeout=10)


def tls_env(server_env: dict, port: int, ca: Path | None, password: str = SECRET) -> dict:
    env = {**server_env, "REDIS_URL": f"rediss://:{password}@localhost:{port}/0"}
    if ca is not None:
        env["REDIS_CA_FILE"] = str(ca)
    return env


def manage(env: dict, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


# --- Settings --------------------------------------------------------------------------------


def layer_hosts(env: dict) -> str:
    code = "from django.conf import settings; print(settings.CHANNEL_LAYERS['default'])"
    result = manage(env, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_ca_file_reaches_the_layer_for_rediss_urls_only(server_env, redis_ca):
    hosts = layer_hosts(tls_env(server_env, 6380, redis_ca.ca_cert))
    assert f"'ssl_ca_certs': '{redis_ca.ca_cert}'" in hosts
    assert "ssl_" not in layer_hosts({**server_env, "REDIS_URL": "redis://127.0.0.1:6379/0"})


def test_a_ca_file_with_a_plain_redis_url_is_refused(server_env, redis_ca):
    env = {**server_env, "REDIS_URL": "redis://:pw@127.0.0.1:6379/0"}
    result = manage({**env, "REDIS_CA_FILE": str(redis_ca.ca_cert)}, "check")
    assert result.returncode != 0
    expected = "REDIS_CA_FILE set, but REDIS_URL is redis://: these settings are for Redis over TLS"
    assert expected in result.stderr
    assert ":pw@" not in result.stderr


def test_an_unreadable_ca_file_is_named(server_env, tmp_path):
    missing = tmp_path / "missing-ca.pem"
    result = manage(tls_env(server_env, 6380, missing), "check")
    assert result.returncode != 0
    assert f"REDIS_CA_FILE: cannot read the file {missing}." in result.stderr


# --- Against a real TLS Redis ----------------------------------------------------------------


def test_a_broadcast_over_rediss_reaches_a_wss_client(
    start, dev_certs, client_tls, server_env, redis_tls, redis_ca
):
    env = tls_env(server_env, redis_tls, redis_ca.ca_cert)
    redis_env = {k: env[k] for k in ("REDIS_URL", "REDIS_CA_FILE")}
    port = free_port()
    server = start(daphne_tls_args(port, dev_certs), port, **redis_env)
    counted = redis.Redis.from_url(env["REDIS_URL"], ssl_ca_certs=env["REDIS_CA_FILE"])

    async def scenario():
        async with ws_connect(f"wss://localhost:{port}/ws/", client_tls) as socket_:
            await receive_json(socket_)
            await wait_until_async(lambda: clients_in_presence(counted) == 1, 10, "presence")
            sent = await asyncio.to_thread(manage, env, "broadcast", "over TLS to Redis")
            assert sent.returncode == 0, sent.stderr
            return sent, await receive_json(socket_)

    sent, received = asyncio.run(scenario())
    counted.close()
    assert received["type"] == "broadcast" and received["message"] == "over TLS to Redis"
    assert "(1 connected client(s) at that moment)" in sent.stdout
    log = server.log()
    assert "Channel layer: channels_redis.pubsub.RedisPubSubChannelLayer" in log
    assert SECRET not in log + sent.stdout + sent.stderr
    assert "rediss://" not in log


@pytest.mark.parametrize("ca", ["another CA", "no CA file"])
def test_a_certificate_from_an_untrusted_ca_fails_clearly(server_env, redis_tls, dev_certs, ca):
    """Verification is on: with the wrong CA file, or the system's CAs only, Redis is refused."""
    ca_file = dev_certs.ca_cert if ca == "another CA" else None
    result = manage(tls_env(server_env, redis_tls, ca_file), "broadcast", "never sent")
    assert result.returncode == 1
    assert "Cannot reach Redis (REDIS_URL)" in result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_a_wrong_password_fails_clearly(server_env, redis_tls, redis_ca):
    wrong = "wrong-" + secrets.token_urlsafe(8)
    env = tls_env(server_env, redis_tls, redis_ca.ca_cert, password=wrong)
    result = manage(env, "broadcast", "never sent")
    assert result.returncode == 1
    assert "Cannot reach Redis (REDIS_URL)" in result.stderr
    assert "invalid username-password pair" in result.stderr
    assert wrong not in result.stdout + result.stderr


# --- Client certificates (Redis with --tls-auth-clients yes) --------------------------------


def issue_client_certificate(ca: DevCertPaths, directory: Path) -> tuple[Path, Path]:
    """A client certificate (extended key usage clientAuth) signed by the dev CA's key."""
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "realtime worker")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "client.pem", directory / "client-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_a_client_certificate_is_presented_when_redis_requires_one(server_env, redis_ca, tmp_path):
    port, process = start_tls_redis(tmp_path, redis_ca, "--tls-auth-clients", "yes")
    try:
        cert, key = issue_client_certificate(redis_ca, tmp_path)
        env = tls_env(server_env, port, redis_ca.ca_cert)
        without = manage(env, "broadcast", "no client certificate")
        with_cert = manage(
            {**env, "REDIS_CLIENT_CERT": str(cert), "REDIS_CLIENT_KEY": str(key)},
            "broadcast",
            "with a client certificate",
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert without.returncode == 1 and "Cannot reach Redis" in without.stderr
    assert with_cert.returncode == 0, with_cert.stderr
    assert "sent to everyone" in with_cert.stdout
