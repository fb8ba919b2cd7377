"""The server's TLS profiles, after Mozilla's Server Side TLS guidelines 5.7. Pure data.

    intermediate  TLS 1.2 (ECDHE and an AEAD cipher only) and TLS 1.3.
    modern        TLS 1.3 only.

Both: key exchange on X25519MLKEM768 (preferred), X25519, P-256 or P-384 only; no TLS
compression, no renegotiation, the client's cipher order; no DHE suites. Each passes
`sslyze --mozilla_config=<name>` (tests/test_tls_profile.py). realtime/server/endpoints.py
applies them; REALTIME_TLS_PROFILE picks one for `serve` and `runserver --tls`. The suites,
the clients each profile serves, and why: docs/tls.md ("TLS profiles").
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
    def openssl_groups(self) -> str:
        """The groups for OpenSSL: the post-quantum ones a tuple of their own, preferred."""
        quantum = [group for group in self.groups if group in POST_QUANTUM_GROUPS]
        classic = [group for group in self.groups if group not in POST_QUANTUM_GROUPS]
        return "/".join(":".join(tuple_) for tuple_ in (quantum, classic) if tuple_)

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
# A hybrid of X25519 and ML-KEM-768: a recording of today's traffic stays unreadable to a future
# quantum computer. Browsers offer it (Chromium 131+, Firefox 132+) and the OpenSSL that
# cryptography bundles has it. Mozilla's guidelines 5.7 predate it. It is a tuple of its own
# ("X25519MLKEM768/X25519:P-256:P-384", OpenSSL 3.5+): a client that offers it gets it, at the
# cost of a HelloRetryRequest only if it sent no key share for it; a client that does not offer
# it gets X25519 or a NIST curve with no retry. In one tuple OpenSSL would follow the client's
# key shares instead, and a client sending X25519's first would never get the hybrid.
POST_QUANTUM_GROUPS = ("X25519MLKEM768",)
GROUPS = POST_QUANTUM_GROUPS + MOZILLA_GROUPS

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
        groups=GROUPS,
        server_cipher_preference=False,
    ),
    "modern": TLSProfile(
        name="modern",
        versions=("TLSv1.3",),
        tls12_ciphers=(),
        tls13_ciphersuites=MOZILLA_TLS13_CIPHERSUITES,
        groups=GROUPS,
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
