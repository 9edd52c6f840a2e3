"""Policy distribution through the store: pushed pack versions, the active one, the replicas.

``stage0 policy push`` stores a pack's text with its ``name@version``, the SHA-256 of its
canonical content (``policy_sha256``) and a ``generation`` one higher than any before, and
makes it the active pack (``policy_active``, one row: the pack is global). Every server
process on the store serves the active pack (:class:`stage0.server.reload.StorePolicy`) and
records what it serves in ``policy_replicas`` (its heartbeat).

Switching together: an activation takes the exclusive policy lock (PostgreSQL: the advisory
lock :data:`POLICY_LOCK`; SQLite: the database's write lock), and every decision batch reads
the active pack under the shared lock right before it commits (:func:`read_active_in`), so a
batch decided under the old pack commits before the activation does, and a batch that reads
the new one commits after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from stage0.policy import CompiledPolicy
from stage0.policy.loader import compile_text
from stage0.store.database import Store
from stage0.store.schema import policy_active, policy_replicas, policy_versions

SCOPE = "global"
"""The one scope of ``policy_active`` today: the pack is global (every tenant)."""
POLICY_LOCK = (0x53_30, 0x16_01)
"""PostgreSQL advisory lock (two ``int4`` keys, a key space apart from the tenants' ``bigint``
locks): activations take it exclusively, decision batches share it until their commit."""


class PushRefused(ValueError):
    """A push or an activation was refused; ``code`` says why, the message how to go on."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    generation: int
    policy_version: str
    name: str
    version: str
    sha256: str
    pushed_by: str
    pushed_us: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    generation: int
    policy_version: str
    sha256: str
    epoch: int
    """Activations so far (push, activate, rollback)."""
    activated_by: str
    activated_us: int
    previous_generation: int | None
    """What was active before (``stage0 policy rollback`` goes back to it)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Replica:
    replica_id: str
    hostname: str
    pid: int
    generation: int | None
    """The store generation it serves; ``None``: a pack file or the built-in pack."""
    policy_version: str | None
    sha256: str | None
    state: str
    """``serving`` (the active pack), ``drifting`` (another one), ``failed`` (the active pack
    does not load there: it fails closed), ``file`` (no pack is active in the store)."""
    error: str | None
    started_us: int
    seen_us: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PushResult:
    version: PolicyVersion
    stored: bool
    """A new row (``False``: the same content was stored before and is activated again)."""
    active: ActivePolicy


def sha256_of(text: str) -> str:
    """The ``policy_sha256`` of a pack's text (raises :class:`~stage0.policy.PolicyError`)."""
    return compile_text(text).sha256


@contextmanager
def _locked(store: Store) -> Iterator[Connection]:
    """A write transaction holding the exclusive policy lock."""
    with store.begin() as conn:  # SQLite: BEGIN IMMEDIATE, the database's write lock
        if store.dialect == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({POLICY_LOCK[0]}, "
                                 f"{POLICY_LOCK[1]})")
        yield conn


def _version(row: Any) -> PolicyVersion:
    return PolicyVersion(int(row.generation), row.policy_version, row.name, row.version,
                         row.sha256, row.pushed_by, int(row.pushed_us))


def _active(conn: Connection) -> ActivePolicy | None:
    row = conn.execute(select(policy_active).where(policy_active.c.scope == SCOPE)).first()
    if row is None:
        return None
    return ActivePolicy(int(row.generation), row.policy_version, row.sha256, int(row.epoch),
                        row.activated_by, int(row.activated_us),
                        None if row.previous_generation is None else int(row.previous_generation))


_VERSION_COLUMNS = [c for c in policy_versions.c if c.name != "pack_text"]


def _find(conn: Connection, ref: str | int) -> PolicyVersion | None:
    """A stored version by generation (a number) or ``name@version``."""
    where = (policy_versions.c.generation == int(ref)) if str(ref).isdigit() else (
        policy_versions.c.policy_version == str(ref))
    row = conn.execute(select(*_VERSION_COLUMNS).where(where)).first()
    return _version(row) if row is not None else None


def _activate(conn: Connection, version: PolicyVersion, active: ActivePolicy | None, by: str,
              now_us: int) -> ActivePolicy:
    values = {"generation": version.generation, "policy_version": version.policy_version,
              "sha256": version.sha256, "epoch": (active.epoch if active else 0) + 1,
              "activated_by": by, "activated_us": now_us,
              "previous_generation": active.generation if active else None}
    if active is None:
        conn.execute(insert(policy_active).values(scope=SCOPE, **values))
    else:
        conn.execute(update(policy_active).where(policy_active.c.scope == SCOPE).values(**values))
    return ActivePolicy(**values)  # type: ignore[arg-type]


def push(store: Store, text: str, *, pushed_by: str, now_us: int,
         policy: CompiledPolicy | None = None) -> PushResult:
    """Store the pack ``text`` and make it the active one.

    ``policy``: ``text`` compiled already (else it is compiled here; a pack that does not load
    raises :class:`~stage0.policy.PolicyError`). Refused (:class:`PushRefused`): ``UNCHANGED``
    when the active pack has the same content hash; ``VERSION_CONFLICT`` when its
    ``name@version`` was pushed before with other content. A pack pushed before with the same
    content (an earlier version) is activated again without a new row."""
    compiled = policy if policy is not None else compile_text(text)
    with _locked(store) as conn:
        active = _active(conn)
        if active is not None and active.sha256 == compiled.sha256:
            raise PushRefused("UNCHANGED", f"{compiled.policy_version} (sha256 "
                              f"{compiled.sha256[:12]}…) is already active (generation "
                              f"{active.generation}); nothing to push")
        seen = _find(conn, compiled.policy_version)
        if seen is not None and seen.sha256 != compiled.sha256:
            raise PushRefused("VERSION_CONFLICT", (
                f"{compiled.policy_version} was pushed before (generation {seen.generation}, "
                f"sha256 {seen.sha256[:12]}…) with other content (this pack's sha256 is "
                f"{compiled.sha256[:12]}…); bump `version` in the pack"))
        stored = seen is None
        if seen is None:
            top = conn.execute(select(func.max(policy_versions.c.generation))).scalar()
            seen = PolicyVersion(int(top or 0) + 1, compiled.policy_version, compiled.name,
                                 compiled.version, compiled.sha256, pushed_by, now_us)
            conn.execute(insert(policy_versions).values(pack_text=text, **seen.to_dict()))
        return PushResult(seen, stored, _activate(conn, seen, active, pushed_by, now_us))


def activate(store: Store, ref: str | int, *, by: str, now_us: int) -> ActivePolicy:
    """Make a stored version (generation number or ``name@version``) the active one.
    Refused: ``UNKNOWN_VERSION``, ``UNCHANGED`` (it is active already)."""
    with _locked(store) as conn:
        found = _find(conn, ref)
        if found is None:
            raise PushRefused("UNKNOWN_VERSION", f"no pushed policy version `{ref}` (see "
                              "`stage0 policy status`)")
        active = _active(conn)
        if active is not None and active.generation == found.generation:
            raise PushRefused("UNCHANGED", f"{found.policy_version} (generation "
                              f"{found.generation}) is already active")
        return _activate(conn, found, active, by, now_us)


def rollback(store: Store, *, by: str, now_us: int) -> ActivePolicy:
    """Make the previously active version active again. Refused: ``NOTHING_TO_ROLL_BACK``."""
    with store.connect() as conn:
        active = _active(conn)
    if active is None or active.previous_generation is None:
        raise PushRefused("NOTHING_TO_ROLL_BACK",
                          "no earlier version was active; nothing to roll back to")
    return activate(store, active.previous_generation, by=by, now_us=now_us)


def active_policy(store: Store) -> ActivePolicy | None:
    with store.connect() as conn:
        return _active(conn)


def versions(store: Store) -> list[PolicyVersion]:
    """Every pushed version, newest first."""
    with store.connect() as conn:
        rows = conn.execute(select(*_VERSION_COLUMNS)
                            .order_by(policy_versions.c.generation.desc())).all()
    return [_version(r) for r in rows]


def pack_text(store: Store, ref: str | int) -> tuple[PolicyVersion, str] | None:
    """A stored version and its pack text."""
    with store.connect() as conn:
        found = _find(conn, ref)
        if found is None:
            return None
        text = conn.execute(select(policy_versions.c.pack_text)
                            .where(policy_versions.c.generation == found.generation)).scalar()
    return found, str(text)


def store_unchecked(store: Store, text: str, *, policy_version: str, pushed_by: str,
                    now_us: int) -> PolicyVersion:
    """Store and activate ``text`` without compiling it: what a newer Stage0 would push that
    this one cannot load (tests of the replicas' fail-closed path use it). The hash is of the
    text (no canonical form can be computed)."""
    name, _, version = policy_version.partition("@")
    with _locked(store) as conn:
        active = _active(conn)
        top = conn.execute(select(func.max(policy_versions.c.generation))).scalar()
        row = PolicyVersion(int(top or 0) + 1, policy_version, name, version,
                            hashlib.sha256(text.encode()).hexdigest(), pushed_by, now_us)
        conn.execute(insert(policy_versions).values(pack_text=text, **row.to_dict()))
        _activate(conn, row, active, pushed_by, now_us)
    return row


# -- the decision writer's read, under the shared lock -----------------------------------------

ACTIVE_SQL = f"SELECT generation, sha256 FROM policy_active WHERE scope = '{SCOPE}'"
SHARED_LOCK_SQL = f"SELECT pg_advisory_xact_lock_shared({POLICY_LOCK[0]}, {POLICY_LOCK[1]})"


def send_active_read(conn: Any, dialect: str) -> list[Any]:
    """Send, on the writer's raw connection inside its transaction, the read of the active
    generation (PostgreSQL: after taking the shared policy lock, held until the commit; both
    can go in one pipeline); returns the cursors to read it from with :func:`fetch_active`."""
    cursors = []
    if dialect == "postgresql":
        cursors.append(conn.cursor())
        cursors[-1].execute(SHARED_LOCK_SQL)
    cursors.append(conn.cursor())
    cursors[-1].execute(ACTIVE_SQL)
    return cursors


def fetch_active(cursors: list[Any]) -> tuple[int, str] | None:
    """The active ``(generation, sha256)``, ``None`` when no pack was ever pushed."""
    try:
        row = cursors[-1].fetchone()
    finally:
        for cursor in cursors:
            cursor.close()
    return (int(row[0]), str(row[1])) if row is not None else None


# -- replicas' heartbeats -------------------------------------------------------------------


def heartbeat(store: Store, replica: Replica, *, forget_before_us: int | None = None) -> None:
    """Record ``replica``'s state (insert or update its row); with ``forget_before_us``, also
    delete the rows of replicas not seen since then."""
    values = replica.to_dict()
    with store.begin() as conn:
        done = conn.execute(update(policy_replicas)
                            .where(policy_replicas.c.replica_id == replica.replica_id)
                            .values(**values))
        if not done.rowcount:
            conn.execute(insert(policy_replicas).values(**values))
        if forget_before_us is not None:
            conn.execute(delete(policy_replicas)
                         .where(policy_replicas.c.seen_us < forget_before_us))


def forget(store: Store, replica_id: str) -> None:
    with store.begin() as conn:
        conn.execute(delete(policy_replicas).where(policy_replicas.c.replica_id == replica_id))


def replicas(store: Store, *, seen_since_us: int = 0) -> list[Replica]:
    """The replicas seen since ``seen_since_us``, by id."""
    with store.connect() as conn:
        rows = conn.execute(select(policy_replicas)
                            .where(policy_replicas.c.seen_us >= seen_since_us)
                            .order_by(policy_replicas.c.replica_id)).all()
    return [Replica(r.replica_id, r.hostname, int(r.pid),
                    None if r.generation is None else int(r.generation), r.policy_version,
                    r.sha256, r.state, r.error, int(r.started_us), int(r.seen_us))
            for r in rows]
