"""pyOpenSSL's context and Twisted's CertificateOptions: the private state realtime sets.

pyOpenSSL sets one curve only, and cannot clear an option flag; Twisted's CertificateOptions
always sets server cipher preference. tests/test_upstream.py asserts both reach-ins.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL


def set_key_exchange_groups(context: SSL.Context, groups: str) -> None:
    """Offer exactly these key exchange groups on a context, in OpenSSL's list syntax
    ("X25519:prime256v1", with "/" between tuples of equal preference since OpenSSL 3.5).

    pyOpenSSL's only curve setter (`set_tmp_ecdh`) takes a single curve; OpenSSL's own call,
    through the cryptography bindings pyOpenSSL is built on, takes the whole list. It needs
    the context's private `_context` pointer."""
    if Binding.lib.SSL_CTX_set1_curves_list(context._context, groups.encode("ascii")) != 1:
        raise ValueError(f"OpenSSL refused the key exchange groups {groups}.")


def clear_option(options: Any, flag: int) -> None:
    """Clear an OpenSSL option flag that Twisted's CertificateOptions always sets (it keeps
    them in the private `_options` until it builds the context; pyOpenSSL cannot clear a flag
    on a context). Used for OP_CIPHER_SERVER_PREFERENCE under a profile that leaves the cipher
    choice to the client."""
    options._options &= ~flag
