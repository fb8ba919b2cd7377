"""The server's TLS profiles, after Mozilla's Server Side TLS guidelines 5.7. Pure data.

    intermediate  TLS 1.2 and 1.3. TLS 1.2 only with ECDHE key exchange and an AEAD cipher
                  (AES-GCM or ChaCha20-Poly1305). Every browser of the last ten years.
    modern        TLS 1.3 only (its cipher suites are all AEAD). Firefox 63, Chrome 70,
                  Safari 12.1, Android 10, Java 11, OpenSSL 1.1.1 and newer.

Both: key exchange on X25519, P-256 or P-384 only (OpenSSL would also offer X448 and P-521),
no TLS compression, no renegotiation, and the client's cipher order (all the ciphers left are
strong, and clients without AES hardware then pick ChaCha20). Each profile passes
`sslyze --mozilla_config=<name>` (tests/test_tls_profile.py). realtime/server/endpoints.py applies
them; REALTIME_TLS_PROFILE picks one for `serve` and `runserver --tls`.

DHE suites of the guidelines are left out: they need DH parameters, and ECDHE covers every
client the intermediate profile is meant for.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PROFILE = "intermediate"


@dataclass(frozen=True)
class TLSProfile:
    """What a TLS server of one profile accepts. Names are OpenSSL's."""

    name: str
    versions: tuple[str, ...]
    tls12_ciphers: tuple[str, ...]  # TLS 1.2 cipher suites, in order of preference
    tls13_ciphersuites: tuple[str, ...]
    groups: tuple[str, ...]  # key exchange groups (curves), in order of preference
    server_cipher_preference: bool

    @property
    def min_version(self) -> str:
        return self.versions[0]

    @property
    def max_version(self) -> str:
        return self.versions[-1]


MOZILLA_TLS13_CIPHERSUITES = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)
MOZILLA_GROUPS = ("X25519", "P-256", "P-384")

PROFILES: dict[str, TLSProfile] = {
    "intermediate": TLSProfile(
        name="intermediate",
        versions=("TLSv1.2", "TLSv1.3"),
        tls12_ciphers=(
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "ECDHE-RSA-CHACHA20-POLY1305",
        ),
        tls13_ciphersuites=MOZILLA_TLS13_CIPHERSUITES,
        groups=MOZILLA_GROUPS,
        server_cipher_preference=False,
    ),
    "modern": TLSProfile(
        name="modern",
        versions=("TLSv1.3",),
        tls12_ciphers=(),
        tls13_ciphersuites=MOZILLA_TLS13_CIPHERSUITES,
        groups=MOZILLA_GROUPS,
        server_cipher_preference=False,
    ),
}


def tls_profile(name: str, what: str = "the TLS profile") -> TLSProfile:
    """The profile called `name`; a ValueError naming `what` and the choices otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        choices = " or ".join(PROFILES)
        raise ValueError(f"{what} must be {choices}, not {name!r}.") from None
