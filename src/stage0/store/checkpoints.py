"""Signed chain checkpoints: a tenant's ``(seq, row_hash)`` signed with the server's key.

The hash chain (:mod:`stage0.store.ledger`) shows a changed, inserted or deleted row, but not a
change that keeps it consistent: the newest rows deleted and the head rewound, or every hash
recomputed from a row onwards. A checkpoint pins the chain at one ``seq``: since each
``row_hash`` covers the row before it, the ``row_hash`` at ``seq`` commits to every row up to
it. A checkpoint is a compact JWS (header ``typ: stage0-checkpoint+jwt``, ``alg: Ed25519``,
``kid``) signed with the execution-token key of :mod:`stage0.store.signing`, so whoever holds
the server's public keys (``GET /.well-known/jwks.json``) can check it, over the claims
``{"tenant", "seq", "row_hash", "iat"}``.

Checkpoints are kept in ``chain_checkpoints`` (one per ``(tenant, seq)``), made by the running
server (:class:`Checkpointer`, every ``STAGE0_CHECKPOINT_EVERY_ROWS`` rows or
``STAGE0_CHECKPOINT_INTERVAL_S`` seconds) and by ``stage0 audit checkpoint``, which also appends
them to a witness file (JSON lines, :meth:`Checkpoint.witness_line`) kept outside the database.
:func:`verify` checks each one's signature and the chain against it (``ledger.check_anchors``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey
from sqlalchemy import and_, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stage0.contract.tokens import ALGORITHM
from stage0.store import ledger
from stage0.store.database import Store
from stage0.store.schema import chain_checkpoints, chain_heads, decisions, signing_keys
from stage0.store.signing import Keyring, TokenError

log = logging.getLogger("stage0.checkpoints")

TYP = "stage0-checkpoint+jwt"
"""The JWS ``typ`` of a checkpoint: never taken for an execution token (``JWT``), nor one for
it."""
REASONS = ("periodic", "manual", "partition")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted; the message says why."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tenant: str
    seq: int
    row_hash: str
    kid: str
    reason: str
    """``periodic`` (the server), ``manual`` (``stage0 audit checkpoint``) or ``partition``."""
    created_us: int
    jws: str

    @property
    def at(self) -> str:
        return datetime.fromtimestamp(self.created_us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def witness_line(self) -> dict[str, Any]:
        """What a witness file keeps: the JWS, and its claims in readable form."""
        return {"tenant": self.tenant, "seq": self.seq, "row_hash": self.row_hash,
                "at": self.at, "kid": self.kid, "reason": self.reason, "jws": self.jws}


def _from_row(row: Any) -> Checkpoint:
    return Checkpoint(tenant=row.tenant_id, seq=int(row.seq), row_hash=row.row_hash,
                      kid=row.kid, reason=row.reason, created_us=int(row.created_us),
                      jws=row.jws)


# -- signing ------------------------------------------------------------------------------------


def sign_checkpoint(store: Store, keyring: Keyring, tenant: str, seq: int, *,
                    reason: str = "manual", now_us: int | None = None) -> Checkpoint:
    """Sign and store a checkpoint of ``tenant``'s chain at ``seq`` (the row there must
    exist); the one already stored at that ``seq``, if any — except that a ``partition``
    checkpoint (a retention boundary, which says so in its signed claims) replaces one of
    another reason at its ``seq``. Raises ``LookupError`` when the row does not exist,
    :class:`~stage0.store.signing.TokenError` without an active key."""
    if reason not in REASONS:
        raise ValueError(f"unknown checkpoint reason {reason!r}")
    with store.connect() as conn:
        existing = conn.execute(select(chain_checkpoints).where(and_(
            chain_checkpoints.c.tenant_id == tenant, chain_checkpoints.c.seq == seq))).first()
        if existing is not None and (reason != "partition" or existing.reason == reason):
            return _from_row(existing)
        found = conn.execute(select(decisions.c.row_hash).where(and_(
            decisions.c.tenant_id == tenant, decisions.c.seq == seq))).first()
    if found is None:
        raise LookupError(f"tenant {tenant!r} has no row at seq {seq}")
    now_us = int(time.time() * 1e6) if now_us is None else now_us
    key = keyring.active()
    claims: dict[str, Any] = {"tenant": tenant, "seq": seq, "row_hash": found.row_hash,
                              "iat": now_us // 1_000_000}
    if reason == "partition":  # signed: only such a checkpoint lets verify start after it
        claims["reason"] = reason
    token = jwt.encode({"alg": ALGORITHM, "kid": key.kid, "typ": TYP}, claims, key.private,
                       algorithms=[ALGORITHM])
    made = Checkpoint(tenant=tenant, seq=seq, row_hash=found.row_hash, kid=key.kid,
                      reason=reason, created_us=now_us, jws=token)
    insert = (pg_insert if store.dialect == "postgresql" else sqlite_insert)(chain_checkpoints)
    with store.begin() as conn:
        if existing is not None:  # a boundary replaces the periodic or manual one at its seq
            conn.execute(chain_checkpoints.delete().where(and_(
                chain_checkpoints.c.tenant_id == tenant, chain_checkpoints.c.seq == seq,
                chain_checkpoints.c.reason != "partition")))
        # another process may have signed this seq meanwhile: the first one stays
        conn.execute(insert.values(
            tenant_id=tenant, seq=seq, row_hash=made.row_hash, kid=made.kid, reason=reason,
            created_us=now_us, jws=token).on_conflict_do_nothing(
                index_elements=[chain_checkpoints.c.tenant_id, chain_checkpoints.c.seq]))
        kept = conn.execute(select(chain_checkpoints).where(and_(
            chain_checkpoints.c.tenant_id == tenant, chain_checkpoints.c.seq == seq))).one()
    return _from_row(kept)


def heads(store: Store, tenant: str | None = None) -> dict[str, tuple[int, str]]:
    """Each tenant's chain head, ``(seq, row_hash)``."""
    query = select(chain_heads)
    if tenant is not None:
        query = query.where(chain_heads.c.tenant_id == tenant)
    with store.connect() as conn:
        return {r.tenant_id: (int(r.seq), r.row_hash) for r in conn.execute(query)}


def checkpoint_heads(store: Store, keyring: Keyring, tenant: str | None = None, *,
                     reason: str = "manual") -> list[Checkpoint]:
    """A checkpoint at each tenant's head (or one tenant's), oldest tenant name first."""
    return [sign_checkpoint(store, keyring, t, seq, reason=reason)
            for t, (seq, _) in sorted(heads(store, tenant).items())]


def stored(store: Store, tenant: str | None = None) -> list[Checkpoint]:
    """The stored checkpoints, by tenant and ``seq``."""
    query = select(chain_checkpoints)
    if tenant is not None:
        query = query.where(chain_checkpoints.c.tenant_id == tenant)
    with store.connect() as conn:
        return [_from_row(r) for r in conn.execute(
            query.order_by(chain_checkpoints.c.tenant_id, chain_checkpoints.c.seq))]


# -- the running server's periodic checkpoints --------------------------------------------------


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


@dataclass(frozen=True, slots=True)
class CheckpointSettings:
    """When the running server checkpoints a tenant's chain: once ``every_rows`` rows were
    appended since its last checkpoint, or ``interval_s`` seconds after it when any were;
    0 turns that trigger off (both 0: no periodic checkpoints)."""

    every_rows: int = 10_000
    interval_s: float = 60.0

    @property
    def enabled(self) -> bool:
        return self.every_rows > 0 or self.interval_s > 0

    @classmethod
    def from_env(cls) -> CheckpointSettings:
        return cls(every_rows=int(_env_number("STAGE0_CHECKPOINT_EVERY_ROWS", 10_000)),
                   interval_s=_env_number("STAGE0_CHECKPOINT_INTERVAL_S", 60.0))


@dataclass(slots=True)
class Checkpointer:
    """Checkpoints every chain whose head moved far enough or long enough ago. Called from a
    background thread's ticks (``__call__`` looks at most every ``poll_s`` seconds); every
    server process runs one, and one checkpoint per ``(tenant, seq)`` is stored whoever signs
    it first."""

    store: Store
    settings: CheckpointSettings = field(default_factory=CheckpointSettings)
    clock: Callable[[], float] = time.time
    """The real time, in seconds (not the evaluation clock: ``--frozen-time`` leaves it)."""
    poll_s: float = 1.0
    keyring: Keyring | None = None
    _last: dict[str, tuple[int, int]] | None = None
    """Each tenant's newest checkpoint, ``(seq, created_us)``, as this process knows it."""
    _polled: float = 0.0

    def __call__(self) -> None:
        if not self.settings.enabled or time.monotonic() - self._polled < self.poll_s:
            return
        self._polled = time.monotonic()
        try:
            self.run_once()
        except TokenError as exc:
            log.warning("no chain checkpoint signed: %s", exc)
        except Exception:  # keep the thread's other work going; retried at the next poll
            log.exception("chain checkpoint pass failed")

    def _newest(self, tenant: str | None = None) -> dict[str, tuple[int, int]]:
        newest = (select(chain_checkpoints.c.tenant_id,
                         func.max(chain_checkpoints.c.seq).label("seq"))
                  .group_by(chain_checkpoints.c.tenant_id))
        if tenant is not None:
            newest = newest.where(chain_checkpoints.c.tenant_id == tenant)
        sub = newest.subquery()
        query = select(chain_checkpoints.c.tenant_id, chain_checkpoints.c.seq,
                       chain_checkpoints.c.created_us).join(sub, and_(
                           chain_checkpoints.c.tenant_id == sub.c.tenant_id,
                           chain_checkpoints.c.seq == sub.c.seq))
        with self.store.connect() as conn:
            return {r.tenant_id: (int(r.seq), int(r.created_us)) for r in conn.execute(query)}

    def _due(self, head_seq: int, last: tuple[int, int], now_us: int) -> bool:
        seq, at_us = last
        if head_seq <= seq:
            return False
        rows = self.settings.every_rows
        interval_us = self.settings.interval_s * 1e6
        return (rows > 0 and head_seq - seq >= rows) or (
            interval_us > 0 and now_us - at_us >= interval_us)

    def run_once(self) -> list[Checkpoint]:
        """One pass: sign a checkpoint at the head of every chain that is due one."""
        if self._last is None:
            self._last = self._newest()
        if self.keyring is None:
            self.keyring = Keyring(self.store)
        now_us = int(self.clock() * 1e6)
        made = []
        for tenant, (seq, _) in sorted(heads(self.store).items()):
            if not self._due(seq, self._last.get(tenant, (0, 0)), now_us):
                continue
            # another process may have signed one since this one last looked
            self._last.update(self._newest(tenant))
            if not self._due(seq, self._last.get(tenant, (0, 0)), now_us):
                continue
            try:
                checkpoint = sign_checkpoint(self.store, self.keyring, tenant, seq,
                                             reason="periodic", now_us=now_us)
            except LookupError:  # the head points at no row: `stage0 audit verify` says so
                log.error("chain of tenant %r: its head (seq %d) is not in the log", tenant, seq)
                continue
            self._last[tenant] = (checkpoint.seq, checkpoint.created_us)
            made.append(checkpoint)
        return made


# -- verifying ----------------------------------------------------------------------------------


def public_keys(store: Store) -> dict[str, OKPKey]:
    """Every signing key's public half, retired keys included (a checkpoint outlives the
    tokens of its key)."""
    with store.connect() as conn:
        rows = list(conn.execute(select(signing_keys.c.kid, signing_keys.c.public_jwk)))
    return {r.kid: OKPKey.import_key(orjson.loads(r.public_jwk)) for r in rows}


def load_jwks(path: str | Path) -> dict[str, OKPKey]:
    """The public keys of a JWKS document (as ``GET /.well-known/jwks.json`` serves it)."""
    try:
        document = orjson.loads(Path(path).read_bytes())
        keys = KeySet.import_key_set(document)
    except (OSError, orjson.JSONDecodeError, JoseError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a JWKS document ({exc})") from None
    found = {}
    for key in keys.keys:
        kid = key.kid
        if isinstance(key, OKPKey) and kid:
            found[kid] = key
    return found


def unverified_tenant(token: str) -> str | None:
    """The tenant a checkpoint claims, before any check (to file a problem under)."""
    try:
        claims = orjson.loads(jws.extract_compact(token.encode()).payload)
    except (JoseError, ValueError):
        return None
    tenant = claims.get("tenant") if isinstance(claims, dict) else None
    return tenant if isinstance(tenant, str) else None


def check(token: str, keys: Mapping[str, OKPKey]) -> dict[str, Any]:
    """The claims of ``token``, if it is a well-formed checkpoint signed by one of ``keys``."""
    try:
        header = jws.extract_compact(token.encode()).headers()
    except (JoseError, ValueError) as exc:
        raise CheckpointError(f"not a compact JWS ({exc})") from None
    if header.get("typ") != TYP:
        raise CheckpointError(f"not a chain checkpoint (typ {header.get('typ')!r})")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise CheckpointError(f"its signature is not valid: key {kid!r} is not a known "
                              "signing key")
    try:
        payload = jws.deserialize_compact(token, key, algorithms=[ALGORITHM]).payload
    except (JoseError, ValueError) as exc:
        raise CheckpointError(f"its signature is not valid ({exc})") from None
    claims = orjson.loads(payload or b"null")
    if not (isinstance(claims, dict) and isinstance(claims.get("tenant"), str)
            and type(claims.get("seq")) is int and claims["seq"] >= 1
            and isinstance(claims.get("row_hash"), str) and _HEX64.fullmatch(claims["row_hash"])
            and type(claims.get("iat")) is int):
        raise CheckpointError("its claims are not a checkpoint's")
    return claims | {"kid": kid}


def _signed_at(claims: Mapping[str, Any]) -> str:
    return datetime.fromtimestamp(claims["iat"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Anchors:
    """Verified checkpoints (as ``ledger.Anchor``) and what failed, per tenant."""

    anchors: dict[str, list[ledger.Anchor]] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)

    def add(self, tenant: str, claims: Mapping[str, Any], source: str) -> None:
        self.anchors.setdefault(tenant, []).append(ledger.Anchor(
            claims["seq"], claims["row_hash"], f"{source}, signed {_signed_at(claims)}",
            boundary=claims.get("reason") == "partition"))

    def fail(self, tenant: str, problem: str) -> None:
        self.problems.setdefault(tenant, []).append(problem)


READABLE = ("tenant", "seq", "row_hash", "kid")
"""The witness line's readable fields that must say what its signature says."""


def _witness(anchors: Anchors, path: str | Path, keys: Mapping[str, OKPKey],
             tenant: str | None) -> None:
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise CheckpointError(f"cannot read the witness file {path}: {exc}") from None
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"witness {path} line {number}"
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            entry = raw.decode("utf-8", "replace").strip()  # a bare compact JWS
        token = entry.get("jws") if isinstance(entry, dict) else entry
        if not isinstance(token, str):
            anchors.fail(f"(witness {path})", f"{where} is not a checkpoint")
            continue
        named = entry.get("tenant") if isinstance(entry, dict) else None
        owner = named if isinstance(named, str) else unverified_tenant(token)
        if tenant is not None and owner != tenant:
            continue
        try:
            claims = check(token, keys)
        except CheckpointError as exc:
            anchors.fail(owner or f"(witness {path})",
                         f"{where}: the checkpoint cannot be trusted: {exc}")
            continue
        if tenant is not None and claims["tenant"] != tenant:
            continue
        if isinstance(entry, dict):
            altered = [k for k in READABLE if k in entry and entry[k] != claims[k]]
            if altered:
                anchors.fail(claims["tenant"], f"{where}: its {', '.join(altered)} "
                             "differ from what its signature says: the line was altered")
                continue
        anchors.add(claims["tenant"], claims, where)


def _stored(anchors: Anchors, store: Store, keys: Mapping[str, OKPKey],
            tenant: str | None) -> None:
    for cp in stored(store, tenant):
        where = f"stored checkpoint at seq {cp.seq}"
        try:
            claims = check(cp.jws, keys)
        except CheckpointError as exc:
            anchors.fail(cp.tenant, f"{where}: the checkpoint cannot be trusted: {exc}")
            continue
        if (claims["tenant"], claims["seq"], claims["row_hash"]) != (
                cp.tenant, cp.seq, cp.row_hash):
            anchors.fail(cp.tenant, f"{where}: its columns differ from what its signature "
                         "says: the row was altered")
            continue
        anchors.add(cp.tenant, claims, where)


def verify(store: Store, tenant: str | None = None, *, witness: Iterable[str | Path] = (),
           jwks: Iterable[str | Path] = ()) -> list[ledger.TenantReport]:
    """``ledger.verify``, against every stored checkpoint and those of the ``witness`` files.

    Signatures are checked with the store's signing keys, or, given ``jwks`` files, with
    theirs only (public keys kept outside the database, so that a key added to it is not
    trusted). Raises :class:`CheckpointError` for a witness or JWKS file that cannot be read.
    """
    jwks = list(jwks)
    keys: dict[str, OKPKey] = {}
    if jwks:
        for path in jwks:
            keys.update(load_jwks(path))
    else:
        keys = public_keys(store)
    anchors = Anchors()
    _stored(anchors, store, keys, tenant)
    for path in witness:
        _witness(anchors, path, keys, tenant)
    return ledger.verify(store, tenant, anchors=anchors.anchors, problems=anchors.problems)


def append_witness(path: str | Path, made: Iterable[Checkpoint]) -> None:
    """Append checkpoints to a witness file as JSON lines, flushed to disk."""
    with Path(path).open("ab") as out:
        for checkpoint in made:
            out.write(orjson.dumps(checkpoint.witness_line()) + b"\n")
        out.flush()
        os.fsync(out.fileno())
