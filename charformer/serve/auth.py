"""Access control: the bearer token, and where the server may listen.

The token (RFC 6750: ``Authorization: Bearer <token>``) comes from the environment variable
``CHARFORMER_API_TOKEN`` or from ``--token-file`` (the file's content, surrounding whitespace stripped; the
file wins when both are set), so it never appears on a command line that ``ps`` shows. When set, every
``/v1/`` request must carry it (401 otherwise); the page, /healthz, /readyz and /metrics stay open, as a
load balancer and a metrics scraper need them and they reveal no text. The comparison takes the same time
whatever the mismatch (`hmac.compare_digest`).

A server without a token answers anyone who can reach it, so it may only listen on a loopback address
(127.0.0.0/8, ::1, localhost); `check_bind` refuses anything else before the socket is opened.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from ..errors import CharformerError

TOKEN_ENV = "CHARFORMER_API_TOKEN"


def load_token(token_file: str | None) -> str | None:
    """The API token from `token_file`, else from ``$CHARFORMER_API_TOKEN``, else None. Raises
    CharformerError for an unreadable or empty file, or an empty variable."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CharformerError(f"{token_file}: cannot read the token ({e})") from None
        source = token_file
    else:
        token = os.environ.get(TOKEN_ENV)
        if token is None:
            return None
        token, source = token.strip(), f"${TOKEN_ENV}"
    if not token:
        raise CharformerError(f"{source}: the API token is empty")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def check_bind(host: str, token: str | None) -> None:
    """Raise CharformerError when `host` is not a loopback address and no token is set."""
    if token is None and not is_loopback(host):
        raise CharformerError(f"refusing to listen on {host} without an API token: set ${TOKEN_ENV} or give "
                              "--token-file (or listen on 127.0.0.1)")


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header value carries `token` (always True when no token is set)."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
