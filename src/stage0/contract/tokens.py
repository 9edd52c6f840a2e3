"""The execution token's wire format: a compact JWS (JWT) signed with Ed25519."""

from __future__ import annotations

from joserfc import jws
from joserfc.errors import JoseError

ALGORITHM = "Ed25519"
"""RFC 9864's fully-specified name for EdDSA over Ed25519 (RFC 8037)."""


def token_kid(token: str) -> str | None:
    """The ``kid`` of a compact JWS's protected header (``None`` if there is none)."""
    try:
        header = jws.extract_compact(token.encode()).headers()
    except (JoseError, ValueError):
        return None
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None
