"""Twisted endpoint descriptions (`kind:PORT:name=value...`), built by one pure function.

daphne takes its listeners as such strings (`daphne -e`). The dev CA's `ssl:` string
(realtime/tls/devca.py) and the server floor's `realtime:`, `realtime-redirect:` and
`realtime-plain:` strings (realtime/server/) are all built here, so escaping and the port's
check are written once.
"""

from __future__ import annotations


def escape_endpoint_value(value: str) -> str:
    """Escape `\\`, `:` and `=` with a backslash for a Twisted endpoint description."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def endpoint_string(kind: str, port: int, **options: object) -> str:
    """`kind:PORT:name=value...` with the options in the order given (pure: no file is read).

    >>> endpoint_string("realtime-plain", 8000, interface="[::1]", reusePort=True, backlog=None)
    'realtime-plain:8000:interface=\\\\:\\\\:1:reusePort=yes'

    An option that is None, False or "" is left out; True is written `yes`. Values are escaped
    (`escape_endpoint_value`); an IPv6 `interface` may be given as "::1" or "[::1]".
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, not {port!r}.")
    parts = [kind, str(port)]
    for name, value in options.items():
        if value is None or value is False or value == "":
            continue
        text = "yes" if value is True else str(value)
        if name == "interface" and text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        parts.append(f"{name}={escape_endpoint_value(text)}")
    return ":".join(parts)
