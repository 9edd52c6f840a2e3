"""Console sessions, kept in the database so that every worker process of ``stage0 serve``
sees them.

The browser holds a random 256-bit session id in an HttpOnly cookie; the store keeps only its
SHA-256, the key it signed in with, an expiry and a per-session CSRF token. The API key's secret
is used once, at sign-in, and never stored. Every request re-reads the key, so revoking it ends
its sessions at once.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import and_, delete, select

from stage0.store.database import Store
from stage0.store.keys import ApiKey
from stage0.store.schema import api_keys, console_sessions

TTL_ENV = "STAGE0_CONSOLE_SESSION_TTL_S"
SECURE_ENV = "STAGE0_CONSOLE_SECURE_COOKIE"
DEFAULT_TTL_S = 8 * 3600


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    session_ttl_s: int = DEFAULT_TTL_S
    """How long a sign-in lasts (absolute, not sliding)."""
    secure_cookie: str = "auto"
    """``auto``: the cookie is ``Secure`` when the request came over HTTPS (as uvicorn sees it:
    a trusted proxy's ``X-Forwarded-Proto`` counts); ``always``: whatever the scheme."""

    @classmethod
    def from_env(cls) -> ConsoleSettings:
        ttl = int(os.environ.get(TTL_ENV) or DEFAULT_TTL_S)
        if ttl <= 0:
            raise ValueError(f"{TTL_ENV} must be a positive number of seconds")
        secure = (os.environ.get(SECURE_ENV) or "auto").strip().lower()
        if secure not in ("auto", "always"):
            raise ValueError(f"{SECURE_ENV} must be `auto` or `always`")
        return cls(session_ttl_s=ttl, secure_cookie=secure)


@dataclass(frozen=True, slots=True)
class Session:
    key: ApiKey
    csrf: str
    expires_us: int

    def can(self, *scopes: str) -> bool:
        """The key holds one of ``scopes`` (``admin`` implies every scope)."""
        return self.key.can(*scopes)


def _now_us() -> int:
    return int(time.time() * 1e6)  # sessions run on real time, even with --frozen-time


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(store: Store, key: ApiKey, ttl_s: int) -> tuple[str, Session]:
    """A new session for ``key``: the cookie value (returned once) and the session."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = _now_us()
    expires = now + ttl_s * 1_000_000
    with store.begin() as conn:
        conn.execute(delete(console_sessions).where(console_sessions.c.expires_us <= now))
        conn.execute(console_sessions.insert().values(
            id_hash=_hash(token), tenant_id=key.tenant_id, key_id=key.id, csrf_token=csrf,
            created_us=now, expires_us=expires))
    return token, Session(key, csrf, expires)


def load_session(store: Store, token: str) -> Session | None:
    """The live session for the cookie value ``token``: unexpired, its key not revoked."""
    if not token or len(token) > 200:
        return None
    query = (
        select(*api_keys.c, console_sessions.c.csrf_token, console_sessions.c.expires_us)
        .join(api_keys, api_keys.c.id == console_sessions.c.key_id)
        .where(and_(console_sessions.c.id_hash == _hash(token),
                    console_sessions.c.expires_us > _now_us(),
                    api_keys.c.revoked_at.is_(None)))
    )
    with store.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return Session(ApiKey.from_row(row), row.csrf_token, int(row.expires_us))


def close_session(store: Store, token: str) -> None:
    with store.begin() as conn:
        conn.execute(delete(console_sessions).where(console_sessions.c.id_hash == _hash(token)))
