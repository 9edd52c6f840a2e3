"""Execution-token signing keys (Ed25519) and the JWKS that publishes them.

Tokens are JWS compact serialisations (JWT) signed with Ed25519, algorithm name ``Ed25519``
(RFC 9864's fully-specified name for what RFC 8037 called ``EdDSA``), made and checked with
``joserfc``. The private keys live in the store's ``signing_keys`` table, so every server
process signs with the same key; ``stage0 keys rotate-signing`` adds a new key and retires the
old one, whose public half stays in the JWKS until every token it signed has expired.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey
from sqlalchemy import select, update

from stage0.contract.tokens import ALGORITHM, token_kid
from stage0.store.database import Store
from stage0.store.schema import signing_keys

RETIRED_KEPT_S = 600.0  # longer than the longest token (5 min) plus clock skew


class TokenError(ValueError):
    """A token that must not be honoured; the message says why."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: OKPKey
    created_us: int
    retired_us: int | None


def _new_key(now_us: int) -> dict[str, Any]:
    kid = f"s0-{time.strftime('%Y%m%d', time.gmtime(now_us / 1e6))}-{secrets.token_hex(4)}"
    key = OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig",
                                                     "alg": ALGORITHM})
    return {
        "kid": kid,
        "private_pem": key.as_pem(private=True).decode(),
        "public_jwk": orjson.dumps(key.as_dict(private=False)).decode(),
        "created_us": now_us,
        "retired_us": None,
    }


def ensure_signing_key(store: Store) -> str:
    """The active key's id, creating the first key when there is none."""
    with store.begin() as conn:
        row = conn.execute(
            select(signing_keys.c.kid).where(signing_keys.c.retired_us.is_(None))
            .order_by(signing_keys.c.created_us.desc()).limit(1)
        ).first()
        if row is not None:
            return str(row.kid)
        record = _new_key(int(time.time() * 1e6))
        conn.execute(signing_keys.insert().values(**record))
        return str(record["kid"])


def rotate_signing_key(store: Store) -> tuple[str, list[str]]:
    """Add a new active key and retire the others; returns (new kid, retired kids)."""
    now_us = int(time.time() * 1e6)
    with store.begin() as conn:
        active = [r.kid for r in conn.execute(
            select(signing_keys.c.kid).where(signing_keys.c.retired_us.is_(None)))]
        conn.execute(update(signing_keys).where(signing_keys.c.retired_us.is_(None))
                     .values(retired_us=now_us))
        record = _new_key(now_us)
        conn.execute(signing_keys.insert().values(**record))
    return str(record["kid"]), active


class Keyring:
    """Signs with the newest active key and verifies with every key still published.

    Keys are re-read from the store at most every ``refresh_s`` seconds (and at once for an
    unknown ``kid``), so a rotation reaches every server process quickly.
    """

    def __init__(self, store: Store, refresh_s: float = 5.0) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._loaded_at = 0.0
        self._keys: dict[str, SigningKey] = {}

    def _refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._loaded_at < self._refresh_s:
            return
        with self._store.connect() as conn:
            rows = list(conn.execute(select(signing_keys)))
        keys = {}
        for r in rows:
            cached = self._keys.get(r.kid)
            keys[r.kid] = SigningKey(
                kid=r.kid,
                private=cached.private if cached is not None else OKPKey.import_key(
                    r.private_pem.encode(), parameters={"kid": r.kid}),
                created_us=int(r.created_us),
                retired_us=None if r.retired_us is None else int(r.retired_us),
            )
        self._keys = keys
        self._loaded_at = time.monotonic()

    def active(self) -> SigningKey:
        self._refresh()
        live = [k for k in self._keys.values() if k.retired_us is None]
        if not live:
            self._refresh(force=True)
            live = [k for k in self._keys.values() if k.retired_us is None]
        if not live:
            # Never created here: this runs inside the pipeline's transaction. `stage0 serve`
            # creates the first key before it serves.
            raise TokenError("no active signing key; run `stage0 keys rotate-signing`")
        return max(live, key=lambda k: k.created_us)

    def published(self, now_us: int) -> list[SigningKey]:
        self._refresh()
        return [k for k in self._keys.values()
                if k.retired_us is None or now_us - k.retired_us < RETIRED_KEPT_S * 1e6]

    def jwks(self, now_us: int) -> dict[str, Any]:
        return {"keys": [k.private.as_dict(private=False) | {"kid": k.kid, "use": "sig",
                                                               "alg": ALGORITHM}
                         for k in sorted(self.published(now_us), key=lambda k: -k.created_us)]}

    def sign(self, claims: dict[str, Any]) -> str:
        key = self.active()
        return jwt.encode({"alg": ALGORITHM, "kid": key.kid, "typ": "JWT"}, claims, key.private,
                          algorithms=[ALGORITHM])

    def verify(self, token: str, now: float) -> dict[str, Any]:
        """The token's claims, if it is signed by a published key and unexpired."""
        kid = token_kid(token)
        if kid not in self._keys:
            self._refresh(force=True)
        key = self._keys.get(kid or "")
        if key is None or key not in self.published(int(now * 1e6)):
            raise TokenError("the token is not signed by a key this server publishes")
        try:
            decoded = jwt.decode(token, KeySet([OKPKey.import_key(
                key.private.as_dict(private=False))]), algorithms=[ALGORITHM])
        except (JoseError, ValueError) as exc:
            raise TokenError(f"the token's signature is not valid ({exc})") from None
        claims = dict(decoded.claims)
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now:
            raise TokenError("the token has expired")
        return claims
