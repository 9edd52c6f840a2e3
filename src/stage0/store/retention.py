"""Retention of the decision log: monthly partitions on PostgreSQL, pruned at signed boundaries.

On PostgreSQL ``decisions`` is partitioned by range on ``created_us``, one partition per
calendar month (UTC, ``decisions_pYYYYMM``) and ``decisions_default`` for what falls outside
them (migration 0012). :class:`PartitionMaintainer` (on the running server's background tick)
keeps the next months' partitions created ahead.

:func:`prune` removes whole months before a date. Each tenant's chain is cut at one ``seq``,
its *boundary*: every row of the tenant at or below it is in the pruned months, every row above
it is kept. The boundary is signed first (``checkpoints.sign_checkpoint(...,
reason="partition")``), so ``stage0 audit verify`` checks the rest of the chain from that
signed ``(seq, row_hash)`` instead of from seq 1. A row of a pruned month chained after a kept
row (``created_us`` is the decision's time, ``seq`` its place in the chain: at a month's edge,
two server processes can order them differently by a few milliseconds) is above the boundary
and is kept: it is moved to the default partition before its month is dropped. On SQLite (not
partitioned) :func:`prune` deletes the same rows with ``DELETE``, after the same checkpoints.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, literal, select, text
from sqlalchemy.engine import Connection

from stage0.store import checkpoints
from stage0.store.database import Store
from stage0.store.schema import chain_heads, decisions, export_cursors
from stage0.store.signing import Keyring

log = logging.getLogger("stage0.retention")

AHEAD_MONTHS = 3
"""How many months after the current one have their partition created in advance."""
_PARTITION = re.compile(r"decisions_p(\d{4})(\d{2})")


def month_bounds(year: int, month: int) -> tuple[int, int]:
    """``[start, end)`` of a calendar month (UTC), in microseconds."""
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000


def months_between(first_us: int, now_us: int, ahead: int) -> list[tuple[int, int]]:
    """``(year, month)`` from the month of ``first_us`` to ``ahead`` months after ``now_us``'s."""
    first = datetime.fromtimestamp(first_us / 1e6, UTC)
    now = datetime.fromtimestamp(now_us / 1e6, UTC)
    index, last = first.year * 12 + first.month - 1, now.year * 12 + now.month - 1 + ahead
    return [(i // 12, i % 12 + 1) for i in range(index, last + 1)]


def partition_name(start_us: int) -> str:
    at = datetime.fromtimestamp(start_us / 1e6, UTC)
    return f"decisions_p{at.year:04d}{at.month:02d}"


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    start_us: int
    end_us: int

    @property
    def month(self) -> str:
        return datetime.fromtimestamp(self.start_us / 1e6, UTC).strftime("%Y-%m")


def partitioned(store: Store) -> bool:
    """Whether the store's ``decisions`` is a partitioned table (PostgreSQL since 0012)."""
    if store.dialect != "postgresql":
        return False
    with store.connect() as conn:
        return bool(conn.execute(text(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = 'decisions' AND c.relnamespace = current_schema()::regnamespace"
        )).first())


def partitions(store: Store, conn: Connection | None = None) -> list[Partition]:
    """The monthly partitions, oldest first (not the default partition)."""
    if store.dialect != "postgresql":
        return []
    query = text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'decisions' "
        "AND p.relnamespace = current_schema()::regnamespace")
    if conn is None:
        with store.connect() as own:
            names = [r[0] for r in own.execute(query)]
    else:
        names = [r[0] for r in conn.execute(query)]
    found = []
    for name in names:
        match = _PARTITION.fullmatch(name)
        if match:
            start, end = month_bounds(int(match[1]), int(match[2]))
            found.append(Partition(name, start, end))
    return sorted(found, key=lambda p: p.start_us)


def ensure_partitions(store: Store, now_us: int | None = None,
                      ahead: int = AHEAD_MONTHS, since_us: int | None = None) -> list[str]:
    """Create the monthly partitions from the current month (or ``since_us``'s) to ``ahead``
    months on (those missing); returns the names created. A month whose rows already landed in
    the default partition is left to it (and logged): creating the partition would fail."""
    if not partitioned(store):
        return []
    now_us = int(time.time() * 1e6) if now_us is None else now_us
    have = {p.name for p in partitions(store)}
    made = []
    for year, month in months_between(now_us if since_us is None else since_us, now_us, ahead):
        low, high = month_bounds(year, month)
        name = partition_name(low)
        if name in have:
            continue
        with store.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(515152)"))
            if name in {p.name for p in partitions(store, conn)}:
                continue
            stray = conn.execute(text(
                "SELECT 1 FROM decisions_default WHERE created_us >= :lo AND created_us < :hi "
                "LIMIT 1"), {"lo": low, "hi": high}).first()
            if stray is not None:
                log.warning("rows of %s are in decisions_default: no partition %s created",
                            name[11:], name)
                continue
            conn.execute(text(f"CREATE TABLE {name} PARTITION OF decisions "
                              f"FOR VALUES FROM ({low}) TO ({high})"))
        made.append(name)
    return made


@dataclass(slots=True)
class PartitionMaintainer:
    """Keeps future monthly partitions created: called from the server's background tick,
    looks at most every ``every_s`` seconds (a no-op on SQLite)."""

    store: Store
    every_s: float = 3600.0
    _last: float = field(default=-1e18)

    def __call__(self) -> None:
        if self.store.dialect != "postgresql" or time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        try:
            for name in ensure_partitions(self.store):
                log.info("created decision-log partition %s", name)
        except Exception:  # retried at the next look; the default partition takes the rows
            log.exception("creating decision-log partitions failed")


# -- pruning --------------------------------------------------------------------------------------


@dataclass(slots=True)
class PruneReport:
    before_us: int
    partitions: list[str] = field(default_factory=list)
    """What was (or, with ``dry_run``, would be) dropped: partition names, or on SQLite the
    months' rows deleted."""
    rows: int = 0
    boundaries: dict[str, int] = field(default_factory=dict)
    """Each pruned tenant's boundary ``seq`` (signed, reason ``partition``)."""
    kept: int = 0
    """Rows of the pruned months kept (chained after a kept row), moved to the default
    partition."""


def _boundaries(conn: Connection, cut: Any, heads: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Per tenant with rows before the cut: ``(boundary, rows before the cut)``."""
    d = decisions.c
    old = {r.tenant_id: (int(r.top), int(r.n)) for r in conn.execute(
        select(d.tenant_id, func.max(d.seq).label("top"), func.count().label("n"))
        .where(cut).group_by(d.tenant_id))}
    kept = {r.tenant_id: int(r.low) for r in conn.execute(
        select(d.tenant_id, func.min(d.seq).label("low"))
        .where(and_(~cut, d.tenant_id.in_(list(old)))).group_by(d.tenant_id))} if old else {}
    found = {}
    for tenant, (top, count) in old.items():
        boundary = kept[tenant] - 1 if tenant in kept else heads.get(tenant, top)
        found[tenant] = (min(boundary, top), count)
    return found


class NotExported(RuntimeError):
    """Rows to prune that an export sink has not acknowledged yet."""


class LogChanged(RuntimeError):
    """Rows of the months to prune were logged while the prune was being prepared."""


def _guard(conn: Connection, heads: dict[str, int], cut: Any) -> None:
    """Under the prune's lock: no row of the pruned months appended since ``heads`` were read
    (which only a server with ``--frozen-time`` in those months, or a clock far behind, could
    do); each check is a short index range."""
    d = decisions.c
    for tenant, seq in conn.execute(select(chain_heads.c.tenant_id, chain_heads.c.seq)):
        before = heads.get(tenant, 0)
        if int(seq) > before and conn.execute(select(d.seq).where(and_(
                d.tenant_id == tenant, d.seq > before, cut)).limit(1)).first() is not None:
            raise LogChanged(f"tenant {tenant!r} logged rows dated in the months to prune "
                             "while the prune was prepared; nothing was removed: run it again")


def _unexported(conn: Connection, boundaries: dict[str, int]) -> list[str]:
    c = export_cursors.c
    return [f"{r.sink} is at seq {r.seq} of {r.tenant_id} (boundary {boundaries[r.tenant_id]})"
            for r in conn.execute(select(c.sink, c.tenant_id, c.seq).where(
                c.tenant_id.in_(list(boundaries))).order_by(c.sink, c.tenant_id))
            if int(r.seq) < boundaries[r.tenant_id]]


def prune(store: Store, keyring: Keyring, before: datetime, *,
          dry_run: bool = False, ignore_export: bool = False) -> PruneReport:
    """Remove the decision log's months that end at or before ``before``: on PostgreSQL their
    partitions (never the default partition), on SQLite the rows decided before the first day
    of ``before``'s month — in both, only rows at or below their tenant's boundary (module
    docstring), which is signed first. Raises :class:`~stage0.store.signing.TokenError`
    without a signing key, :class:`NotExported` when an export sink has not acknowledged
    every row to remove (unless ``ignore_export``). ``dry_run``: report what would be
    removed, change nothing."""
    before_us = int(before.timestamp() * 1e6)
    at = datetime.fromtimestamp(before_us / 1e6, UTC)
    cut_us = month_bounds(at.year, at.month)[0]
    drop = [p for p in partitions(store) if p.end_us <= cut_us] if partitioned(store) else []
    report = PruneReport(before_us, [p.name for p in drop])
    d = decisions.c
    cut = d.created_us < cut_us
    with store.connect() as conn:
        heads = {r.tenant_id: int(r.seq) for r in conn.execute(select(chain_heads))}
        bounds = _boundaries(conn, cut, heads)
    if not drop and bounds:
        report.partitions = [
            f"the rows before {datetime.fromtimestamp(cut_us / 1e6, UTC):%Y-%m-%d}"]
    report.boundaries = {t: b for t, (b, _) in bounds.items() if b > 0}
    above = and_(cut, d.seq > _boundary_case(report.boundaries))
    with store.connect() as conn:
        kept = [(r.tenant_id, int(r.seq)) for r in conn.execute(
            select(d.tenant_id, d.seq).where(above))]
        behind = [] if ignore_export else _unexported(conn, report.boundaries)
    report.kept = len(kept)
    report.rows = sum(n for _, n in bounds.values()) - report.kept
    if behind:
        raise NotExported("rows to prune are not exported yet: " + "; ".join(behind))
    if dry_run:
        return report
    for tenant, boundary in sorted(report.boundaries.items()):
        checkpoints.sign_checkpoint(store, keyring, tenant, boundary, reason="partition")
    with store.begin() as conn:
        if store.dialect == "postgresql":  # DETACH takes it too: taken first, for the guard
            conn.execute(text("LOCK TABLE decisions IN ACCESS EXCLUSIVE MODE"))
        _guard(conn, heads, cut)
        if drop:
            _drop(conn, drop, kept)
        # what is left of those months: SQLite's rows, PostgreSQL's default partition's
        conn.execute(decisions.delete().where(
            and_(cut, d.seq <= _boundary_case(report.boundaries))))
    return report


def _drop(conn: Connection, drop: list[Partition], kept: list[tuple[str, int]]) -> None:
    """Detach and drop ``drop``; first copy the rows of ``kept`` (``(tenant, seq)``: above
    their tenant's boundary) they hold to the default partition, by their unique index."""
    conn.execute(text("SELECT pg_advisory_xact_lock(515152)"))
    for partition in drop:
        conn.execute(text(f"ALTER TABLE decisions DETACH PARTITION {partition.name}"))
        for tenant, seq in kept:
            conn.execute(text(f"INSERT INTO decisions SELECT * FROM {partition.name} "
                              "WHERE tenant_id = :t AND seq = :s"), {"t": tenant, "s": seq})
        conn.execute(text(f"DROP TABLE {partition.name}"))


def _boundary_case(boundaries: dict[str, int]) -> Any:
    if not boundaries:
        return literal(0)
    return case(dict(boundaries), value=decisions.c.tenant_id, else_=0)


