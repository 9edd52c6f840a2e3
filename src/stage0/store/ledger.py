"""The decision log: every answered request, hash-chained per tenant, and its verification.

Each row's ``row_hash`` is the SHA-256 of the RFC 8785 canonical JSON of the row's recorded
fields, ``prev_hash`` (the previous row's hash in the tenant's chain) included; ``seq`` numbers
the chain 1, 2, 3… and ``chain_heads`` keeps the newest ``(seq, row_hash)`` of each tenant.
``verify`` recomputes every chain: a modified row breaks its own hash, an inserted or reordered
row breaks the link, a deleted row leaves a gap in ``seq`` or a head that points past the end.
What the chain cannot show by itself — the newest rows deleted and the head rewound, or every
hash recomputed from a row onwards — ``verify`` finds against anchors (:class:`Anchor`): ``(seq,
row_hash)`` pairs known from elsewhere, the signed checkpoints of :mod:`stage0.store.checkpoints`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NotRequired, TypedDict

import orjson
from sqlalchemy import ClauseElement, and_, bindparam, func, select

from stage0.engine.digest import sha256_hex
from stage0.store.database import Store
from stage0.store.schema import chain_heads, decisions
from stage0.store.sql import compiled, insert, one_of, one_of_params, upsert

GENESIS = "0" * 64

HASHED_FIELDS = (
    "tenant_id", "seq", "request_id", "key_id", "kind", "http_status", "verdict", "decision",
    "policy_version", "policy_sha256", "input_sha256", "action_digest", "environment", "tools",
    "buckets", "request", "redacted_paths", "response", "frozen_time", "timings", "created_us",
    "prev_hash",
)


class LogRecord(TypedDict):
    """One row of the decision log (a decision, a rejected request, an approval or token
    event): the ``decisions`` table's columns. :func:`append` adds ``seq``, ``prev_hash`` and
    ``row_hash``; the database numbers ``id``. JSON documents are stored as text."""

    tenant_id: str
    request_id: str
    key_id: str | None
    kind: str
    http_status: int
    verdict: str
    decision: str
    policy_version: str
    policy_sha256: str
    input_sha256: str
    action_digest: str
    environment: str | None
    tools: str
    buckets: str
    request: str
    redacted_paths: str
    response: str
    frozen_time: str | None
    timings: str
    created_us: int
    seq: NotRequired[int]
    prev_hash: NotRequired[str]
    row_hash: NotRequired[str]


LOGGED = tuple(c.name for c in decisions.c if c.name != "id")
"""The columns a :class:`LogRecord` fills (what :func:`save` inserts)."""
if set(LOGGED) != set(LogRecord.__annotations__):  # pragma: no cover - caught on import
    raise RuntimeError("LogRecord and the decisions table name different columns")


def row_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of the RFC 8785 form of the hashed fields.

    Every hashed field is a string, an integer below 2**53 or null (JSON documents are stored
    as text), the domain on which orjson's sorted-key output is the RFC 8785 form
    (``stage0.engine.digest``; property-tested against ``rfc8785``), so no walk is needed.
    """
    fields = {k: record[k] for k in HASHED_FIELDS}
    return sha256_hex(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))


@dataclass(slots=True)
class ChainCursor:
    """A tenant's chain head while a batch appends to it; rows wait in ``pending``."""

    seq: int
    head: str
    dirty: bool = False
    pending: list[LogRecord] = field(default_factory=list)


def read_head(store: Store, cursor: Any, tenant: str) -> ChainCursor:
    return read_heads(store, cursor, [tenant])()[tenant]


def _heads(dialect: str, count: int) -> ClauseElement:
    return select(chain_heads.c.tenant_id, chain_heads.c.seq, chain_heads.c.row_hash).where(
        one_of(dialect, chain_heads.c.tenant_id, "t", count))


def _insert(_: str) -> ClauseElement:
    return insert(decisions).values({name: bindparam(name) for name in LOGGED})


def _upsert_head(dialect: str) -> ClauseElement:
    return upsert(dialect, chain_heads, {"tenant_id": "t", "seq": "seq", "row_hash": "h"},
                  ["tenant_id"], ["seq", "row_hash"])


def read_heads(store: Store, cursor: Any,
               tenants: Iterable[str]) -> Callable[[], dict[str, ChainCursor]]:
    """Send the read of several tenants' chain heads on ``cursor``; the function returned reads
    the answer (so that the read can share a PostgreSQL pipeline with others)."""
    wanted = sorted(set(tenants))
    cursor.execute(compiled(store.dialect, _heads, len(wanted)),
                   one_of_params(store.dialect, "t", wanted, {}))

    def finish() -> dict[str, ChainCursor]:
        found = {tenant_id: (int(seq), head) for tenant_id, seq, head in cursor.fetchall()}
        return {t: ChainCursor(*found.get(t, (0, GENESIS))) for t in wanted}

    return finish


def append(chain: ChainCursor, record: LogRecord) -> None:
    """Chain ``record`` as the next row; it is written by :func:`save`, in the same
    transaction."""
    chain.seq += 1
    record["seq"] = chain.seq
    record["prev_hash"] = chain.head
    record["row_hash"] = digest = row_hash(record)
    chain.pending.append(record)
    chain.head = digest
    chain.dirty = True


def save(store: Store, cursor: Any, tenant: str, chain: ChainCursor) -> None:
    """Insert the chain's pending rows (one statement) and move its head."""
    if chain.pending:
        cursor.executemany(compiled(store.dialect, _insert), chain.pending)
        chain.pending = []
    if chain.dirty:
        cursor.execute(compiled(store.dialect, _upsert_head),
                       {"t": tenant, "seq": chain.seq, "h": chain.head})
        chain.dirty = False


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anchor:
    """A ``(seq, row_hash)`` of a tenant's chain known from outside the chain (a verified,
    signed checkpoint); ``source`` says where it came from, for the report."""

    seq: int
    row_hash: str
    source: str
    boundary: bool = False
    """A retention boundary (a checkpoint whose signed claims say ``reason: partition``): the
    rows up to ``seq`` may have been pruned, and the chain verified from it."""


@dataclass(slots=True)
class TenantReport:
    tenant: str
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    anchors: int = 0
    """How many anchors (checkpoints) the chain was checked against."""
    anchored_seq: int = 0
    """The newest anchored ``seq`` (0: none)."""
    pruned_to: int = 0
    """The rows up to this ``seq`` were pruned at a signed retention boundary (0: none); the
    chain was verified from it."""

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: Store, tenant: str | None = None,
           anchors: Mapping[str, Sequence[Anchor]] | None = None,
           problems: Mapping[str, Sequence[str]] | None = None) -> list[TenantReport]:
    """Recompute every tenant's chain (or one tenant's) and name each broken row; then check
    the chain against each tenant's ``anchors`` (:func:`check_anchors`). ``problems``: found
    beforehand (a checkpoint whose signature fails), reported with the tenant's chain."""
    anchors = anchors or {}
    problems = problems or {}
    with store.connect() as conn:
        heads = {r.tenant_id: (r.seq, r.row_hash) for r in conn.execute(select(chain_heads))}
        tenant_ids = sorted(
            set(heads) | {r[0] for r in conn.execute(select(decisions.c.tenant_id).distinct())}
            | set(anchors) | set(problems)
        )
        if tenant is not None:
            tenant_ids = [tenant]
        reports = []
        for t in tenant_ids:
            report = TenantReport(t)
            report.problems.extend(problems.get(t, ()))
            wanted = {a.seq for a in anchors.get(t, ())}
            seen: dict[int, str] = {}
            expected_seq, prev = _start(conn, t, anchors.get(t, ()), heads.get(t))
            report.pruned_to = expected_seq - 1
            rows = conn.execute(
                select(decisions).where(decisions.c.tenant_id == t).order_by(decisions.c.seq)
            )
            for row in rows:
                record = dict(row._mapping)
                report.rows += 1
                seq = record["seq"]
                if seq > expected_seq:
                    report.problems.append(
                        f"seq {expected_seq}..{seq - 1} missing before request "
                        f"`{record['request_id']}`: rows were deleted"
                    )
                elif seq < expected_seq:
                    report.problems.append(f"seq {seq} out of order: a row was inserted")
                if record["prev_hash"] != prev:
                    report.problems.append(
                        f"seq {seq} (request `{record['request_id']}`) does not link to the row "
                        "before it: a row was inserted, deleted or reordered"
                    )
                if row_hash(record) != record["row_hash"]:
                    report.problems.append(
                        f"seq {seq} (request `{record['request_id']}`) was modified: its content "
                        "no longer matches its hash"
                    )
                if seq in wanted:
                    seen[seq] = record["row_hash"]
                expected_seq, prev = seq + 1, record["row_hash"]
            head = heads.get(t)
            last_seq = expected_seq - 1
            if head is None and report.rows:
                report.problems.append("the chain head is missing")
            elif head is not None and head[0] > last_seq:
                report.problems.append(
                    f"seq {last_seq + 1}..{head[0]} missing at the end: rows were deleted"
                )
            elif head is not None and head[0] < last_seq:
                report.problems.append(
                    f"seq {head[0] + 1}..{last_seq} are past the chain head: rows were inserted"
                )
            elif head is not None and head[1] != prev:
                report.problems.append("the newest row does not match the chain head")
            check_anchors(report, anchors.get(t, ()), seen, last_seq,
                          None if head is None else int(head[0]), report.pruned_to)
            reports.append(report)
        return reports


def _start(conn: Any, tenant: str, anchors: Sequence[Anchor],
           head: tuple[int, str] | None) -> tuple[int, str]:
    """Where the tenant's chain is verified from: ``(1, GENESIS)``, or just after a signed
    retention boundary when the rows up to it were pruned — the boundary right before the
    first row left, or (no row left) the one at the head."""
    boundaries = {a.seq: a.row_hash for a in anchors if a.boundary}
    if not boundaries:
        return 1, GENESIS
    first = conn.execute(select(func.min(decisions.c.seq)).where(
        decisions.c.tenant_id == tenant)).scalar()
    at = int(first) - 1 if first is not None else (int(head[0]) if head is not None else 0)
    if at >= 1 and at in boundaries:
        return at + 1, boundaries[at]
    return 1, GENESIS


def check_anchors(report: TenantReport, anchors: Sequence[Anchor], seen: Mapping[int, str],
                  last_seq: int, head_seq: int | None, pruned_to: int = 0) -> None:
    """Add to ``report`` what ``anchors`` show about the chain: rows deleted after an anchor
    (the chain truncated, the head rewound) and an anchored row whose hash changed (the chain
    rewritten from a row onwards), bounded by the newest anchor that still matches.

    ``seen``: the ``row_hash`` of each anchored ``seq`` present in the chain; ``last_seq``: its
    newest row; ``head_seq``: where its head points (``None``: no head); ``pruned_to``: the
    signed retention boundary the chain was verified from (anchors up to it name pruned rows,
    not deleted ones)."""
    if not anchors:
        return
    ordered = sorted(anchors, key=lambda a: a.seq)
    report.anchors, report.anchored_seq = len({a.seq for a in ordered}), ordered[-1].seq
    matched, rewritten = pruned_to, []
    for anchor in ordered:
        found = seen.get(anchor.seq)
        if found is None and anchor.seq <= pruned_to:
            continue
        if found is None:
            if anchor.seq <= last_seq:
                report.problems.append(
                    f"seq {anchor.seq}, signed by a checkpoint ({anchor.source}), is missing: "
                    "rows were deleted")
        elif found != anchor.row_hash:
            rewritten.append(anchor)
        elif not rewritten:
            matched = anchor.seq
    if rewritten:
        first = rewritten[0]
        later = len({a.seq for a in rewritten}) - 1
        more = ("" if not later else "; 1 later checkpoint no longer matches" if later == 1
                else f"; {later} later checkpoints no longer match")
        still = f" (the checkpoint at seq {matched} still matches)" if matched else ""
        report.problems.append(
            f"seq {first.seq} no longer has the row_hash its checkpoint signed "
            f"({first.source}): the chain was rewritten from a row in seq "
            f"{matched + 1}..{first.seq} onwards{still}{more}")
    newest = ordered[-1]
    if newest.seq > last_seq:
        rewound = ("the chain head is missing" if head_seq is None
                   else f"the chain head was rewound to seq {head_seq}"
                   if head_seq < newest.seq else f"the chain head still says seq {head_seq}")
        report.problems.append(
            f"seq {last_seq + 1}..{newest.seq} were deleted after a checkpoint signed seq "
            f"{newest.seq} ({newest.source}): the chain was truncated; {rewound}")


def verify_record(store: Store, tenant: str, seq: int) -> list[str]:
    """Check one row of a tenant's chain: its own hash, its link to the row before it, and the
    link of the row after it (or the chain head) to it. Empty when the row verifies."""
    with store.connect() as conn:
        rows = {r.seq: dict(r._mapping) for r in conn.execute(
            select(decisions).where(and_(decisions.c.tenant_id == tenant,
                                         decisions.c.seq.between(seq - 1, seq + 1))))}
        head = conn.execute(select(chain_heads).where(chain_heads.c.tenant_id == tenant)).first()
    record = rows.get(seq)
    if record is None:
        return [f"seq {seq} is not in the chain"]
    problems = []
    if row_hash(record) != record["row_hash"]:
        problems.append(f"seq {seq} was modified: its content no longer matches its hash")
    before = GENESIS if seq == 1 else (rows[seq - 1]["row_hash"] if seq - 1 in rows else None)
    if before is None:
        problems.append(f"seq {seq - 1}, the row before it, is missing: rows were deleted")
    elif record["prev_hash"] != before:
        problems.append(f"seq {seq} does not link to the row before it")
    after = rows.get(seq + 1)
    if after is not None and after["prev_hash"] != record["row_hash"]:
        problems.append(f"seq {seq + 1}, the row after it, does not link to it")
    if after is None and (head is None or (head.seq, head.row_hash) != (seq, record["row_hash"])):
        problems.append(f"seq {seq} is the newest row but the chain head does not point to it")
    return problems


# -- reading ------------------------------------------------------------------------------------


def to_record(row: Any) -> dict[str, Any]:
    """A log row as the API and the export show it (JSON columns decoded)."""
    return mapping_to_record(row._mapping)


def mapping_to_record(m: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`to_record` of a row read as a mapping of column to value."""
    return {
        "request_id": m["request_id"],
        "tenant": m["tenant_id"],
        "seq": m["seq"],
        "created_at": m["created_us"] / 1e6,
        "kind": m["kind"],
        "http_status": m["http_status"],
        "verdict": m["verdict"],
        "decision": m["decision"],
        "policy_version": m["policy_version"],
        "policy_sha256": m["policy_sha256"],
        "input_sha256": m["input_sha256"],
        "action_digest": m["action_digest"],
        "environment": m["environment"],
        "tools": orjson.loads(m["tools"]),
        "buckets": orjson.loads(m["buckets"]),
        "key_id": m["key_id"],
        "request": orjson.loads(m["request"]),
        "redacted_paths": orjson.loads(m["redacted_paths"]),
        "response": orjson.loads(m["response"]),
        "frozen_time": m["frozen_time"],
        "timings": orjson.loads(m["timings"]),
        "prev_hash": m["prev_hash"],
        "row_hash": m["row_hash"],
    }


_GET = "SELECT * FROM decisions WHERE tenant_id = %s AND request_id = %s"


def _get_postgresql(store: Store, tenant: str, request_id: str) -> dict[str, Any] | None:
    """The lookup on a raw pooled connection, outside a transaction: one round trip (no
    ``BEGIN``, no ``ROLLBACK``), a statement psycopg prepares after its fifth use on the
    connection (the partitioned log's plan, one index probe per month, is made once), and none
    of SQLAlchemy's per-statement work (docs/performance.md)."""
    from psycopg.rows import dict_row  # noqa: PLC0415 - PostgreSQL only

    with store.raw() as conn:
        driver = conn.driver_connection
        driver.autocommit = True
        try:
            with driver.cursor(row_factory=dict_row) as cursor:
                cursor.execute(_GET, (tenant, request_id))
                found = cursor.fetchone()
        finally:
            if not driver.closed:
                driver.autocommit = False
    return None if found is None else mapping_to_record(found)


def get(store: Store, tenant: str, request_id: str) -> dict[str, Any] | None:
    """One row by its request id."""
    if store.dialect == "postgresql":
        return _get_postgresql(store, tenant, request_id)
    with store.connect() as conn:
        row = conn.execute(
            select(decisions).where(
                and_(decisions.c.tenant_id == tenant, decisions.c.request_id == request_id)
            )
        ).first()
    return None if row is None else to_record(row)


def search(
    store: Store,
    tenant: str,
    *,
    verdict: str | None = None,
    tool: str | None = None,
    bucket: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    before_id: int | None = None,
    kind: str | None = None,
    environment: str | None = None,
    action_digest: str | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first; returns the page and the id to continue before (``None`` at the end).

    ``kind``: ``None`` for decisions and rejected requests, ``all`` for every record (approval
    and token events included), or one kind (``approval.created``, ``token.consumed``…).
    """
    query = select(decisions).where(decisions.c.tenant_id == tenant)
    if kind is None:
        query = query.where(decisions.c.kind.in_(("decision", "rejected")))
    elif kind != "all":
        query = query.where(decisions.c.kind == kind)
    if verdict:
        query = query.where(decisions.c.verdict == verdict.upper())
    if tool:
        query = query.where(decisions.c.tools.contains(orjson.dumps(tool).decode()))
    if bucket:
        query = query.where(decisions.c.buckets.contains(orjson.dumps(bucket).decode()))
    if environment:
        query = query.where(decisions.c.environment == environment)
    if action_digest:
        query = query.where(decisions.c.action_digest == action_digest)
    if since:
        query = query.where(decisions.c.created_us >= int(since.timestamp() * 1e6))
    if until:
        query = query.where(decisions.c.created_us < int(until.timestamp() * 1e6))
    if before_id is not None:
        query = query.where(decisions.c.id < before_id)
    query = query.order_by(decisions.c.id.desc()).limit(limit + 1)
    with store.connect() as conn:
        rows = list(conn.execute(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return [to_record(r) for r in rows], (rows[-1].id if more and rows else None)


def export(
    store: Store, *, tenant: str | None, since: datetime | None, until: datetime | None,
    batch: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Every record, oldest first, streamed in batches."""
    last_id = 0
    while True:
        query = select(decisions).where(decisions.c.id > last_id)
        if tenant is not None:
            query = query.where(decisions.c.tenant_id == tenant)
        if since:
            query = query.where(decisions.c.created_us >= int(since.timestamp() * 1e6))
        if until:
            query = query.where(decisions.c.created_us < int(until.timestamp() * 1e6))
        with store.connect() as conn:
            rows = list(conn.execute(query.order_by(decisions.c.id).limit(batch)))
        if not rows:
            return
        for row in rows:
            yield to_record(row)
        last_id = rows[-1].id


def count(store: Store, tenant: str | None = None) -> int:
    query = select(func.count()).select_from(decisions)
    if tenant is not None:
        query = query.where(decisions.c.tenant_id == tenant)
    with store.connect() as conn:
        return int(conn.execute(query).scalar_one())
