"""Local HTTPS for development: a private CA and a server certificate signed by it.

`ensure_dev_certificate()` keeps a development certificate authority (created once per
machine, in the certificate directory) and a short-lived server ("leaf") certificate for
localhost, 127.0.0.1, ::1 and any extra host names. Running it again is cheap and
idempotent: the leaf is only re-issued when it is missing, expires within RENEW_BEFORE,
lacks a requested name, or was not signed by the current CA. Once the CA is trusted
(see `trust_instructions()`), browsers and Python clients verify the server normally;
nothing ever needs to turn verification off.

Private keys are written unencrypted (PKCS8 PEM) with mode 0600 and are never logged.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shlex
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from realtime.common.endpoint_strings import endpoint_string

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
RENEW_BEFORE = timedelta(days=30)
LEAF_VALIDITY = timedelta(days=365)
CA_VALIDITY = timedelta(days=3650)
BACKDATE = timedelta(hours=1)  # tolerate small clock differences between processes/hosts

KEY_MODE = 0o600
CERT_MODE = 0o644

GeneralName = x509.DNSName | x509.IPAddress


class DevCertError(Exception):
    """The certificate directory is in a state that needs the user's decision."""


@dataclass(frozen=True)
class DevCertPaths:
    """Where the development CA and server certificate live."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, cert_dir: Path) -> DevCertPaths:
        cert_dir = Path(cert_dir)
        return cls(
            ca_cert=cert_dir / "dev-ca.pem",
            ca_key=cert_dir / "dev-ca-key.pem",
            cert=cert_dir / "localhost.pem",
            key=cert_dir / "localhost-key.pem",
        )


@dataclass
class DevCertResult:
    """What `ensure_dev_certificate()` did, and why."""

    paths: DevCertPaths
    ca_created: bool
    leaf_issued: bool
    reason: str


# --- Host names ------------------------------------------------------------------------------


def general_name(host: str) -> GeneralName:
    """The SAN entry for a host: IPAddress for IP literals ("[::1]" too), else DNSName."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.rstrip(".").lower()
    if not name or any(c.isspace() or c in "/:@[]" for c in name):
        raise DevCertError(f"{host!r} is not a valid host name.")
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise DevCertError(f"{host!r} is not a valid host name.") from None
    return x509.DNSName(name)


def certificate_names(allowed_hosts: list[str]) -> list[str]:
    """The ALLOWED_HOSTS entries a certificate can name (no wildcards or subdomain patterns)."""
    return [host for host in allowed_hosts if host != "*" and not host.startswith(".")]


def name_text(name: GeneralName) -> str:
    """A SAN entry as text; IP addresses in their canonical form."""
    return str(name.value)


def _unique(names: Iterable[GeneralName]) -> list[GeneralName]:
    seen: set[GeneralName] = set()
    result = []
    for name in names:
        if name not in seen:
            seen.add(name)
            result.append(name)
    return result


# --- Reading ---------------------------------------------------------------------------------


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold an ECDSA private key.")
    return key


def _san_names(cert: x509.Certificate) -> list[GeneralName]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name for name in san if isinstance(name, x509.DNSName | x509.IPAddress)]


def leaf_names(cert_path: Path) -> list[str]:
    """The subjectAltName entries of a certificate, IP addresses as strings."""
    return [name_text(name) for name in _san_names(_load_cert(Path(cert_path)))]


def certificate_expiry(cert_path: Path) -> datetime:
    """When a certificate stops being valid (aware, UTC)."""
    return _load_cert(Path(cert_path)).not_valid_after_utc


def _public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_matches(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return _public_bytes(cert.public_key()) == _public_bytes(key.public_key())


# --- Writing ---------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file in the same directory, created with `mode`, then os.replace."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # exact mode, whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, KEY_MODE)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)


def _restrict_key_mode(path: Path) -> None:
    """Tighten an existing private key file to 0600 (contents untouched)."""
    if path.exists() and path.stat().st_mode & 0o077:
        path.chmod(KEY_MODE)


# --- Certificate authority -------------------------------------------------------------------


def _ca_common_name() -> str:
    prefix = "realtime development CA"
    host = socket.gethostname()[: 64 - len(prefix) - 3]
    return f"{prefix} ({host})" if host else prefix


def _build_ca(now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, _ca_common_name()),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "realtime dev CA"),
        ]
    )
    key_usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _load_ca(
    paths: DevCertPaths, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert, key = _load_cert(paths.ca_cert), _load_key(paths.ca_key)
    except ValueError as exc:
        raise DevCertError(
            f"Cannot read the development CA ({exc}). Remove {paths.ca_cert} and "
            f"{paths.ca_key} to start over (then trust the new CA again)."
        ) from None
    if not _key_matches(cert, key):
        raise DevCertError(
            f"{paths.ca_key} does not belong to {paths.ca_cert}. Remove both to start over "
            "(then trust the new CA again)."
        )
    if cert.not_valid_after_utc - now <= RENEW_BEFORE:
        raise DevCertError(
            f"The development CA {paths.ca_cert} expires on "
            f"{cert.not_valid_after_utc:%Y-%m-%d}. Remove {paths.ca_cert} and "
            f"{paths.ca_key} to create a new one (then trust the new CA again)."
        )
    return cert, key


def _ensure_ca(
    paths: DevCertPaths, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    """The CA certificate and key, and whether they were just created."""
    has_cert, has_key = paths.ca_cert.exists(), paths.ca_key.exists()
    if has_cert and not has_key:
        raise DevCertError(
            f"The development CA certificate {paths.ca_cert} exists but its private key "
            f"{paths.ca_key} is missing, so no certificate can be signed. Remove "
            f"{paths.ca_cert} to start over with a new CA (then trust the new CA again)."
        )
    if has_key and not has_cert:
        raise DevCertError(
            f"The development CA private key {paths.ca_key} exists but its certificate "
            f"{paths.ca_cert} is missing. Remove {paths.ca_key} to start over with a new CA."
        )
    if has_cert:
        _restrict_key_mode(paths.ca_key)
        cert, key = _load_ca(paths, now)
        return cert, key, False
    cert, key = _build_ca(now)
    _write_key(paths.ca_key, key)
    _write_cert(paths.ca_cert, cert)
    return cert, key, True


# --- Server certificate ----------------------------------------------------------------------


def _signed_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether `leaf` names `ca` as issuer (name and key id) and its signature verifies."""
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        leaf.verify_directly_issued_by(ca)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        return False
    return aki.key_identifier == ca_ski.digest


def _reissue_reason(
    paths: DevCertPaths,
    ca: x509.Certificate,
    leaf: x509.Certificate | None,
    wanted: list[GeneralName],
    now: datetime,
) -> str | None:
    """Why the leaf must be issued again, or None if the existing one is fine."""
    if leaf is None:
        return "missing" if not paths.cert.exists() else "unreadable"
    if not paths.key.exists():
        return "missing"
    try:
        if not _key_matches(leaf, _load_key(paths.key)):
            return "private key does not match the certificate"
    except ValueError:
        return "private key unreadable"
    if not _signed_by(leaf, ca):
        return "not signed by the current development CA"
    remaining = leaf.not_valid_after_utc - now
    if remaining <= timedelta(0):
        return f"expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
    if remaining <= RENEW_BEFORE:
        return f"expires in {round(remaining / timedelta(days=1))} days"
    if leaf.not_valid_before_utc > now:
        return f"not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    lacking = [name for name in wanted if name not in _san_names(leaf)]
    if lacking:
        return "lacks names: " + ", ".join(name_text(name) for name in lacking)
    return None


def _build_leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: list[GeneralName],
    now: datetime,
    validity: timedelta = LEAF_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name_text(names[0])),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "realtime development server"),
        ]
    )
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + validity, ca.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _read_leaf(path: Path) -> x509.Certificate | None:
    try:
        return _load_cert(path)
    except (OSError, ValueError):
        return None


def _kept_reason(leaf: x509.Certificate) -> str:
    names = ", ".join(name_text(name) for name in _san_names(leaf))
    return f"valid until {leaf.not_valid_after_utc:%Y-%m-%d}, covers {names}"


def ensure_dev_certificate(
    cert_dir: Path,
    extra_hosts: Iterable[str] = (),
    now: datetime | None = None,
    leaf_validity: timedelta = LEAF_VALIDITY,
) -> DevCertResult:
    """Create the development CA if needed and make sure a good server certificate exists.

    The server certificate covers DEFAULT_HOSTS, `extra_hosts` and, when re-issued, every
    name the previous one covered. Existing files that need no change are left untouched.
    A newly issued one is valid for `leaf_validity` (Mozilla's "modern" TLS profile wants
    90 days at most). Raises DevCertError when the CA files are inconsistent.
    """
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if isinstance(extra_hosts, str):
        extra_hosts = [extra_hosts]
    paths = DevCertPaths.in_dir(Path(cert_dir))
    paths.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    wanted = _unique(general_name(host) for host in (*DEFAULT_HOSTS, *extra_hosts))
    ca, ca_key, ca_created = _ensure_ca(paths, now)
    leaf = _read_leaf(paths.cert)
    reason = _reissue_reason(paths, ca, leaf, wanted, now)
    if reason is None and leaf is not None:
        _restrict_key_mode(paths.key)
        return DevCertResult(paths, ca_created, leaf_issued=False, reason=_kept_reason(leaf))
    previous = _san_names(leaf) if leaf is not None else []
    names = _unique([*wanted, *previous])
    new_leaf, new_key = _build_leaf(ca, ca_key, names, now, leaf_validity)
    _write_key(paths.key, new_key)
    _write_cert(paths.cert, new_leaf)
    return DevCertResult(paths, ca_created, leaf_issued=True, reason=reason or "missing")


# --- Serving and trusting --------------------------------------------------------------------


def ssl_endpoint(port: int, cert: Path, key: Path, interface: str | None = None) -> str:
    """A Twisted/daphne TLS server endpoint string (pure: no file is read).

    >>> ssl_endpoint(8443, Path("certs/localhost.pem"), Path("certs/localhost-key.pem"))
    'ssl:8443:privateKey=certs/localhost-key.pem:certKey=certs/localhost.pem'

    Paths and the interface are escaped (realtime/common/endpoint_strings.py); an IPv6
    interface may be given as "::1" or "[::1]" and becomes `interface=\\:\\:1`. Pass it to
    `daphne -e`.
    """
    return endpoint_string("ssl", port, privateKey=key, certKey=cert, interface=interface)


def trust_instructions(ca_cert: Path) -> str:
    """How to make browsers, the OS and Python clients trust the development CA."""
    ca = shlex.quote(str(ca_cert))
    ca_literal = repr(str(ca_cert))
    key_name = Path(ca_cert).with_name("dev-ca-key.pem").name
    return f"""\
To trust the development CA ({ca_cert}) on this machine:

  Debian/Ubuntu (system store, curl, most tools):
    sudo cp {ca} /usr/local/share/ca-certificates/realtime-dev-ca.crt && \\
      sudo update-ca-certificates

  macOS (system keychain, Safari and Chrome):
    sudo security add-trusted-cert -d -r trustRoot \\
      -k /Library/Keychains/System.keychain {ca}

  Firefox/Chromium on Linux (NSS database; certutil is in libnss3-tools):
    certutil -d sql:$HOME/.pki/nssdb -A -t "C,," -n realtime-dev-ca -i {ca}
    (Firefox profiles have their own database: use -d sql:<profile directory>,
    or Settings > Privacy & Security > Certificates > Import.)

  Python clients:
    SSL_CERT_FILE={ca} python your_client.py   (replaces the default CA bundle)
    or in code: ssl.create_default_context(cafile={ca_literal})

Never share {key_name} or copy it off this machine: anyone who has it can
impersonate any site to this machine once the CA is trusted. To stop trusting it,
remove it from the stores above and delete the CA files."""
