"""Tenants and API keys. Keys are random 256-bit secrets, shown once, stored as SHA-256.

A fast hash is the right tool here: the secret has 256 bits of entropy, so there is nothing to
brute-force, and every request looks its key up.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import pyotp
from sqlalchemy import select, update

from stage0.contract.names import canonical_principal
from stage0.store.database import Store
from stage0.store.schema import api_keys, tenants

SCOPES = ("check", "approve", "audit:read", "admin")
PLANS = ("free", "pro")
KEY_PREFIX = "s0_"
PLAN_DEFAULTS: dict[str, dict[str, int | None]] = {
    "free": {"monthly_quota": 10_000, "daily_quota": 1_000, "per_minute": 60},
    "pro": {"monthly_quota": 1_000_000, "daily_quota": 100_000, "per_minute": 6_000},
}


class KeyError_(ValueError):
    """A key operation was refused; the message says why."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant_id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    plan: str
    monthly_quota: int | None
    daily_quota: int | None
    per_minute: int | None
    principal: str | None
    roles: tuple[str, ...]
    created_at: float
    revoked_at: float | None
    totp_secret: str | None = None
    mfa_failures: int = 0
    mfa_locked_until_us: int | None = None
    totp_last_step: int | None = None

    def can(self, *scopes: str) -> bool:
        """The key holds one of ``scopes``; ``admin`` passes every scope."""
        return "admin" in self.scopes or any(s in self.scopes for s in scopes)

    @property
    def totp_uri(self) -> str | None:
        """The otpauth:// provisioning URI of the key's TOTP secret (RFC 6238), if enrolled."""
        if self.totp_secret is None:
            return None
        return pyotp.TOTP(self.totp_secret).provisioning_uri(
            name=self.principal or self.name, issuer_name=f"Stage0 ({self.tenant_id})")

    def totp_step(self, code: str | None, at: float) -> int | None:
        """The 30-second time step ``code`` is valid for (now, or one step either side), or
        ``None`` when it is not a valid code. Callers refuse a step not after the last used."""
        if self.totp_secret is None or not code:
            return None
        totp = pyotp.TOTP(self.totp_secret)
        code = code.strip()
        for offset in (0, -1, 1):
            when = at + offset * totp.interval
            if totp.verify(code, for_time=when, valid_window=0):
                return int(when // totp.interval)
        return None

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        m = row._mapping if hasattr(row, "_mapping") else row
        return cls(
            id=m["id"],
            tenant_id=m["tenant_id"],
            name=m["name"],
            prefix=m["prefix"],
            scopes=tuple(s for s in m["scopes"].split(",") if s),
            plan=m["plan"],
            monthly_quota=m["monthly_quota"],
            daily_quota=m["daily_quota"],
            per_minute=m["per_minute"],
            principal=m["principal"],
            roles=tuple(r for r in (m["roles"] or "").split(",") if r),
            created_at=m["created_at"],
            revoked_at=m["revoked_at"],
            totp_secret=_get(m, "totp_secret"),
            mfa_failures=int(_get(m, "mfa_failures") or 0),
            mfa_locked_until_us=_get(m, "mfa_locked_until_us"),
            totp_last_step=_get(m, "totp_last_step"),
        )

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id, "tenant": self.tenant_id, "name": self.name, "prefix": self.prefix,
            "scopes": list(self.scopes), "plan": self.plan, "monthly_quota": self.monthly_quota,
            "daily_quota": self.daily_quota, "per_minute": self.per_minute,
            "principal": self.principal, "roles": list(self.roles),
            "created_at": self.created_at, "revoked_at": self.revoked_at,
            "mfa_enrolled": self.totp_secret is not None,
        }


def _get(mapping: Any, key: str) -> Any:
    try:
        return mapping[key]
    except (KeyError, IndexError):
        return None


def normalize_principal(principal: str | None) -> str | None:
    """Principals compare after the canonicalisation of names (NFKC, invisible format
    characters removed, case folded, whitespace folded and trimmed): `Agent-7` is `agent-7`, and
    `alice\u200b` is `alice` (:func:`stage0.contract.names.canonical_principal`)."""
    return canonical_principal(principal)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    store: Store,
    *,
    tenant: str,
    name: str,
    scopes: list[str] | tuple[str, ...] = ("check",),
    plan: str = "free",
    monthly_quota: int | None = None,
    daily_quota: int | None = None,
    per_minute: int | None = None,
    unlimited: bool = False,
    principal: str | None = None,
    roles: list[str] | tuple[str, ...] = (),
    totp: bool = False,
) -> tuple[ApiKey, str]:
    """Create a key (and its tenant if new). Returns the record and the secret, shown once."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise KeyError_(f"unknown scope(s) {', '.join(bad)}; choose from {', '.join(SCOPES)}")
    if plan not in PLANS:
        raise KeyError_(f"unknown plan `{plan}`; choose free or pro")
    if not tenant.strip() or not name.strip():
        raise KeyError_("tenant and name must not be empty")
    if {"approve", "admin"} & set(scopes) and not (principal and principal.strip()):
        raise KeyError_("a key with the `approve` or `admin` scope needs a principal "
                        "(--principal): approvers are people or services, never anonymous")
    limits: dict[str, int | None] = (
        dict.fromkeys(PLAN_DEFAULTS[plan]) if unlimited else dict(PLAN_DEFAULTS[plan])
    )
    for field, value in (("monthly_quota", monthly_quota), ("daily_quota", daily_quota),
                         ("per_minute", per_minute)):
        if value is not None:
            if value < 0:
                raise KeyError_(f"{field} must not be negative")
            limits[field] = value
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    record = {
        "id": "key_" + secrets.token_hex(6),
        "tenant_id": tenant,
        "name": name,
        "key_hash": hash_key(secret),
        "prefix": secret[:10],
        "scopes": ",".join(dict.fromkeys(scopes)),
        "plan": plan,
        **limits,
        "principal": principal,
        "roles": ",".join(roles),
        "created_at": now,
        "revoked_at": None,
        "totp_secret": pyotp.random_base32() if totp else None,
    }
    with store.begin() as conn:
        if conn.execute(select(tenants.c.id).where(tenants.c.id == tenant)).first() is None:
            conn.execute(tenants.insert().values(id=tenant, created_at=now))
        conn.execute(api_keys.insert().values(**record))
        row = conn.execute(select(api_keys).where(api_keys.c.id == record["id"])).one()
    return ApiKey.from_row(row), secret


def list_keys(store: Store, tenant: str | None = None) -> list[ApiKey]:
    query = select(api_keys).order_by(api_keys.c.tenant_id, api_keys.c.created_at)
    if tenant is not None:
        query = query.where(api_keys.c.tenant_id == tenant)
    with store.connect() as conn:
        return [ApiKey.from_row(r) for r in conn.execute(query)]


def revoke_key(store: Store, key_id: str) -> ApiKey:
    with store.begin() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise KeyError_(f"no key `{key_id}`")
        if row.revoked_at is None:
            conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=time.time())
            )
        row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one()
    return ApiKey.from_row(row)


def lookup_key(store: Store, secret: str) -> ApiKey | None:
    """The active key for ``secret``; ``None`` when unknown or revoked."""
    with store.connect() as conn:
        row = conn.execute(
            select(api_keys).where(api_keys.c.key_hash == hash_key(secret))
        ).first()
    if row is None or row.revoked_at is not None:
        return None
    return ApiKey.from_row(row)


def bootstrap(store: Store) -> str | None:
    """On an empty store: tenant ``default`` and an admin key (returned, to print once)."""
    with store.connect() as conn:
        if conn.execute(select(tenants.c.id).limit(1)).first() is not None:
            return None
    _, secret = create_key(
        store, tenant="default", name="bootstrap-admin", scopes=list(SCOPES), plan="pro",
        unlimited=True, principal="admin", roles=["admin"],
    )
    return secret
