"""Approval requests: created on a DEFER that needs approval, decided by authenticated approvers.

Writes happen inside the decision pipeline's transaction (raw cursor, tenant lock held); reads
for the API and the CLI use SQLAlchemy Core.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, select

from stage0.engine.approvals import ApprovalEvidence
from stage0.policy.compiled import ApprovalRule
from stage0.store import statements as st
from stage0.store.database import Store
from stage0.store.schema import approval_votes, approvals, decisions
from stage0.store.sql import compiled, one_of_params
from stage0.store.statements import APPROVAL_COLUMNS, VOTE_COLUMNS

COLUMNS = APPROVAL_COLUMNS
"""An approval row's columns, in the order the writer's statements read them."""


def _iso(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Approval:
    row: dict[str, Any]
    votes: list[dict[str, Any]]

    @property
    def id(self) -> str:
        return str(self.row["id"])

    def status_at(self, now_us: int) -> str:
        """``expired`` once a pending request passes its expiry, whatever the stored status."""
        status = str(self.row["status"])
        if status == "pending" and now_us >= int(self.row["expires_us"]):
            return "expired"
        return status

    def view(self, now_us: int) -> dict[str, Any]:
        """The ``approval`` object of the API (CONTRACT section 6)."""
        r = self.row
        action = orjson.loads(r["action"])
        return {
            "approval_id": r["id"],
            "tenant_id": r["tenant_id"],
            "kind": r.get("kind") or "standard",
            "reason": r.get("reason"),
            "lifts": orjson.loads(r["lifts"]) if r.get("lifts") else [],
            "status": self.status_at(now_us),
            "required_approvals": r["required_approvals"],
            "approvals": [v["principal"] for v in self.votes if v["decision"] == "approve"],
            "rejections": [v["principal"] for v in self.votes if v["decision"] == "reject"],
            "eligible_roles": orjson.loads(r["eligible_roles"]),
            "requires_mfa": bool(r["requires_mfa"]),
            "requested_by": {"principal": r["requested_by_principal"],
                             "key_id": r["requested_by_key"], "actor_id": r["actor_id"]},
            "environment": r["environment"],
            "action_digest": r["action_digest"],
            "action": action,
            "buckets": orjson.loads(r["buckets"]),
            "request_id": r["request_id"],
            "policy_version": r["policy_version"],
            "created_at": _iso(r["created_us"]),
            "expires_at": _iso(r["expires_us"]),
            "decided_at": _iso(r["decided_us"]),
            "execute_by": _iso(r["execute_by_us"]),
            "used_at": _iso(r.get("used_us")),
            "used_by_request": r.get("used_by_request"),
            "votes": [
                {**v, "created_at": _iso(v.pop("created_us")), "mfa": bool(v["mfa"])}
                for v in (dict(x) for x in self.votes)
            ],
        }

    def evidence(self, now_us: int) -> ApprovalEvidence:
        r = self.row
        return ApprovalEvidence(
            approval_id=self.id,
            status=self.status_at(now_us),  # type: ignore[arg-type]  # one of the four states
            action_digest=r["action_digest"],
            expires_at=datetime.fromtimestamp(r["expires_us"] / 1e6, UTC),
            execute_by=(None if r["execute_by_us"] is None
                        else datetime.fromtimestamp(r["execute_by_us"] / 1e6, UTC)),
            approvers=tuple(v["principal"] for v in self.votes if v["decision"] == "approve"),
            kind="break_glass" if r.get("kind") == "break_glass" else "standard",
            reason=r.get("reason"),
            lifts=tuple(orjson.loads(r["lifts"])) if r.get("lifts") else (),
            required_approvals=int(r["required_approvals"]),
            requires_mfa=bool(r["requires_mfa"]),
            eligible_roles=frozenset(orjson.loads(r["eligible_roles"])),
            used_by=r.get("used_by_request"),
        )


def is_open(status: str, expires_us: int, execute_by_us: int | None, now_us: int) -> bool:
    """Whether a request can still move its action forward at ``now_us``: pending and
    unexpired, or granted and within its execute-by window (``_OPEN_WHERE`` in SQL)."""
    return (status == "pending" and expires_us > now_us) or (
        status == "approved" and (execute_by_us or 0) > now_us)


def _nothing() -> None:
    """A prefetch with nothing to read."""


def _no_votes(record: dict[str, Any]) -> bool:
    """A pending request with no approve vote has no votes at all (a rejection ends it), so
    reading it spares the votes query, a round trip on PostgreSQL, for every DEFER reusing it.
    ``approvals_count`` is kept current on every vote (migration 0007 recounted old rows)."""
    return record["status"] == "pending" and not record["approvals_count"]


class ApprovalStore:
    """Approval operations on the pipeline's cursor (inside its transaction)."""

    def __init__(self, store: Store) -> None:
        self._sql = {name: compiled(store.dialect, build) for name, build in {
            "one": st.approval_one, "open": st.approval_open, "insert": st.approval_insert,
            "update": st.approval_update,
            "vote": st.vote_insert, "votes": st.votes_of, "count": st.approval_count,
            "expired_ids": st.expired_approvals}.items()}
        self._store = store
        self._cursor: Any = None
        self.now_us = 0
        self._open: dict[tuple[str, str], Approval | None] = {}
        """``open_for`` answers of this transaction (kept current by this store's writes)."""
        self.reads: dict[str, int] = {}
        """Single-request reads made, by statement (``one``, ``open``): what a prefetch
        spared shows here."""

    @property
    def cursor(self) -> Any:
        return self._cursor

    @cursor.setter
    def cursor(self, cursor: Any) -> None:
        """A new transaction (or none): what was read in the last one no longer holds."""
        self._cursor = cursor
        self._open.clear()

    def _fetch(self, sql: str, params: dict[str, Any], *,
               votes_if_counted: bool = False) -> Approval | None:
        cur = self.cursor
        self.reads[sql] = self.reads.get(sql, 0) + 1
        cur.execute(self._sql[sql], params)
        row = cur.fetchone()
        if row is None:
            return None
        record = dict(zip(COLUMNS, row, strict=True))
        if votes_if_counted and _no_votes(record):
            return Approval(record, [])
        cur.execute(self._sql["votes"], {"a": record["id"]})
        votes = [dict(zip(VOTE_COLUMNS, v, strict=True)) for v in cur.fetchall()]
        return Approval(record, votes)

    def prefetch_open(self, tenant: str, digests: set[str], now_us: int,
                      cur: Any) -> Callable[[], None]:
        """Read the open requests of several actions in one query (``open_for`` answers from
        what it read): a batch's DEFERs then cost no query each, a round trip on PostgreSQL.

        The query is sent on ``cur`` and read by the function returned, so that several reads
        can go to PostgreSQL in one pipeline."""
        wanted = [d for d in digests if (tenant, d) not in self._open]
        if not wanted:
            return _nothing
        dialect = self._store.dialect
        cur.execute(compiled(dialect, st.approvals_open_many, len(wanted)),
                    one_of_params(dialect, "d", wanted, {"t": tenant, "now": now_us}))

        def finish() -> None:
            found: dict[str, dict[str, Any]] = {}
            for row in cur.fetchall():  # newest first: the first row of a digest is its answer
                record = dict(zip(COLUMNS, row, strict=True))
                found.setdefault(record["action_digest"], record)
            for digest in wanted:
                hit = found.get(digest)
                if hit is None:
                    self._open[(tenant, digest)] = None
                elif _no_votes(hit):
                    self._open[(tenant, digest)] = Approval(hit, [])
                # otherwise (votes to read) ``open_for`` reads it the usual way

        return finish

    def expired_pending(self, tenant: str, now_us: int) -> list[Approval]:
        cur = self.cursor
        cur.execute(self._sql["expired_ids"], {"t": tenant, "now": now_us})
        ids = [approval_id for (approval_id,) in cur.fetchall()]
        found = [self.get(tenant, i) for i in ids]
        return [a for a in found if a is not None]

    def get(self, tenant: str, approval_id: str) -> Approval | None:
        return self._fetch("one", {"t": tenant, "i": approval_id})

    def open_for(self, tenant: str, digest: str, now_us: int) -> Approval | None:
        """The request for this exact action that can still move it forward: pending, or
        granted and within its execute-by window."""
        key = (tenant, digest)
        if key in self._open:  # read before in this transaction; still open at ``now_us``?
            cached = self._open[key]
            row = cached.row if cached is not None else None
            if row is None or is_open(row["status"], row["expires_us"], row["execute_by_us"],
                                      now_us):
                return cached
        found = self._fetch("open", {"t": tenant, "d": digest, "now": now_us},
                            votes_if_counted=True)
        self._open[key] = found
        return found

    def create(
        self, *, tenant: str, digest: str, action: dict[str, Any], buckets: list[str],
        environment: str | None, request_id: str, key_id: str, principal: str | None,
        actor_id: str | None, policy_version: str, rule: ApprovalRule, now_us: int,
        kind: str = "standard", reason: str | None = None, lifts: list[str] | None = None,
    ) -> Approval:
        record = {
            "id": ("brk_" if kind == "break_glass" else "apr_") + secrets.token_hex(8),
            "tenant_id": tenant,
            "status": "pending",
            "action_digest": digest,
            "action": orjson.dumps(action).decode(),
            "buckets": orjson.dumps(buckets).decode(),
            "environment": environment,
            "request_id": request_id,
            "requested_by_key": key_id,
            "requested_by_principal": principal,
            "actor_id": actor_id,
            "policy_version": policy_version,
            "required_approvals": rule.quorum,
            "approvals_count": 0,
            "eligible_roles": orjson.dumps(sorted(rule.approver_roles)).decode(),
            "requires_mfa": int(rule.approver_mfa),
            "execute_within_s": rule.execute_within,
            "created_us": now_us,
            "expires_us": now_us + int(rule.expires_in * 1e6),
            "decided_us": None,
            "execute_by_us": None,
            "used_us": None,
            "used_by_request": None,
            "kind": kind,
            "reason": reason,
            "lifts": orjson.dumps(lifts).decode() if lifts is not None else None,
        }
        self.cursor.execute(self._sql["insert"], record)
        approval = Approval(record, [])
        self._open[(tenant, digest)] = approval  # the newest open request for the action
        return approval

    def record_vote(self, approval: Approval, *, key_id: str, principal: str, decision: str,
                    reason: str, mfa: bool, now_us: int) -> None:
        self._open.pop((approval.row["tenant_id"], approval.row["action_digest"]), None)
        self.cursor.execute(self._sql["vote"], {
            "a": approval.id, "t": approval.row["tenant_id"], "k": key_id, "p": principal,
            "d": decision, "r": reason, "m": int(mfa), "c": now_us})
        approval.votes.append({"principal": principal, "key_id": key_id, "decision": decision,
                               "reason": reason, "mfa": int(mfa), "created_us": now_us})
        if decision == "approve":  # kept current on every vote (``open_for`` relies on it)
            approval.row["approvals_count"] = sum(
                1 for v in approval.votes if v["decision"] == "approve")
            self.cursor.execute(self._sql["count"], {"n": approval.row["approvals_count"],
                                                     "i": approval.id})

    def set_status(self, approval: Approval, status: str, now_us: int,
                   used_by: str | None = None) -> None:
        row = approval.row
        self._open.pop((row["tenant_id"], row["action_digest"]), None)
        row["status"] = status
        row["approvals_count"] = sum(1 for v in approval.votes if v["decision"] == "approve")
        if status == "used":
            row["used_us"], row["used_by_request"] = now_us, used_by
        elif status != "pending":
            row["decided_us"] = now_us
        if status == "approved":
            row["execute_by_us"] = now_us + int(float(row["execute_within_s"]) * 1e6)
        self.cursor.execute(self._sql["update"], {
            "status": status, "n": row["approvals_count"], "decided": row["decided_us"],
            "execute_by": row["execute_by_us"], "used": row.get("used_us"),
            "used_by": row.get("used_by_request"), "i": approval.id})

    # -- the engine's ApprovalResolver -------------------------------------------------------

    def resolve(self, tenant: str, approval_id: str) -> ApprovalEvidence | None:
        approval = self.get(tenant, approval_id)
        return None if approval is None else approval.evidence(self.now_us)


def _plain(row: Any) -> dict[str, Any]:
    """A row as a dict with plain ``str`` keys (SQLAlchemy's are a ``str`` subclass)."""
    return {str(k): v for k, v in row._mapping.items()}


def list_approvals(store: Store, tenant: str | None, status: str | None, now_us: int,
                   limit: int = 100, *, kind: str | None = None, since_us: int | None = None,
                   until_us: int | None = None) -> list[dict[str, Any]]:
    """Approval requests, newest first; ``tenant=None`` lists every tenant (operator CLI)."""
    query = select(approvals)
    if tenant is not None:
        query = query.where(approvals.c.tenant_id == tenant)
    if kind is not None:
        query = query.where(approvals.c.kind == kind)
    if since_us is not None:
        query = query.where(approvals.c.created_us >= since_us)
    if until_us is not None:
        query = query.where(approvals.c.created_us < until_us)
    if status in ("approved", "rejected", "used"):
        query = query.where(approvals.c.status == status)
    elif status == "pending":
        query = query.where(and_(approvals.c.status == "pending",
                                 approvals.c.expires_us > now_us))
    elif status == "expired":
        query = query.where((approvals.c.status == "expired") | and_(
            approvals.c.status == "pending", approvals.c.expires_us <= now_us))
    query = query.order_by(approvals.c.created_us.desc()).limit(limit)
    with store.connect() as conn:
        rows = [_plain(r) for r in conn.execute(query)]
        out = []
        for row in rows:
            votes = [_plain(v) for v in conn.execute(
                select(approval_votes.c.principal, approval_votes.c.key_id,
                       approval_votes.c.decision, approval_votes.c.reason, approval_votes.c.mfa,
                       approval_votes.c.created_us)
                .where(approval_votes.c.approval_id == row["id"]).order_by(approval_votes.c.id))]
            out.append(Approval(row, votes).view(now_us))
    return out


def get_approval(store: Store, tenant: str, approval_id: str, now_us: int) -> dict[str, Any] | None:
    with store.connect() as conn:
        row = conn.execute(select(approvals).where(
            and_(approvals.c.tenant_id == tenant, approvals.c.id == approval_id))).first()
        if row is None:
            return None
        votes = [_plain(v) for v in conn.execute(
            select(approval_votes.c.principal, approval_votes.c.key_id, approval_votes.c.decision,
                   approval_votes.c.reason, approval_votes.c.mfa, approval_votes.c.created_us)
            .where(approval_votes.c.approval_id == approval_id).order_by(approval_votes.c.id))]
    return Approval(_plain(row), votes).view(now_us)


def _decision_summary(conn: Any, tenant: str, request_id: str | None) -> dict[str, Any] | None:
    if not request_id:
        return None
    row = conn.execute(select(decisions.c.verdict, decisions.c.decision, decisions.c.response,
                              decisions.c.created_us)
                       .where(and_(decisions.c.tenant_id == tenant,
                                   decisions.c.request_id == request_id,
                                   decisions.c.kind == "decision"))).first()
    if row is None:
        return {"request_id": request_id, "found": False}
    issues = orjson.loads(row.response).get("issues", [])
    return {"request_id": request_id, "found": True, "verdict": row.verdict,
            "decision": row.decision, "at": _iso(row.created_us),
            "issues": [i.get("code") for i in issues]}


def break_glass_report(store: Store, tenant: str | None, now_us: int, *,
                       since_us: int | None = None, until_us: int | None = None,
                       limit: int = 1000) -> list[dict[str, Any]]:
    """Break-glass declarations for post-incident review, newest first: who declared what and
    why, the decision it was declared for, and the decision that used it (if any)."""
    items = list_approvals(store, tenant, None, now_us, limit, kind="break_glass",
                           since_us=since_us, until_us=until_us)
    report = []
    with store.connect() as conn:
        for a in items:
            votes = a["votes"]
            execute_by = a["execute_by"]
            used = a["used_by_request"] is not None
            lapsed = not used and a["status"] == "approved" and execute_by is not None and (
                datetime.fromisoformat(execute_by.replace("Z", "+00:00")).timestamp() * 1e6
                <= now_us)
            report.append({
                "approval_id": a["approval_id"],
                "tenant_id": a["tenant_id"],
                "declared_by": votes[0]["principal"] if votes else None,
                "declared_at": a["created_at"],
                "reason": a["reason"],
                "mfa": bool(votes and votes[0]["mfa"]),
                "status": "used" if used else ("lapsed" if lapsed else a["status"]),
                "usable_until": execute_by,
                "action": a["action"],
                "buckets": a["buckets"],
                "environment": a["environment"],
                "requested_by": a["requested_by"],
                "declared_for": _decision_summary(conn, a["tenant_id"], a["request_id"]),
                "used_by": _decision_summary(conn, a["tenant_id"], a["used_by_request"]),
            })
    return report
