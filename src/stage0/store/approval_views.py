"""Reading approval requests for the API, the console and the CLI (SQLAlchemy Core, outside
the decision pipeline): lists, one request, and the break-glass review."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, select

from stage0.store.approvals import Approval, _iso
from stage0.store.database import Store
from stage0.store.schema import approval_votes, approvals, decisions


def _plain(row: Any) -> dict[str, Any]:
    """A row as a dict with plain ``str`` keys (SQLAlchemy's are a ``str`` subclass)."""
    return {str(k): v for k, v in row._mapping.items()}


def list_approvals(store: Store, tenant: str | None, status: str | None, now_us: int,
                   limit: int = 100, *, kind: str | None = None, since_us: int | None = None,
                   until_us: int | None = None,
                   public_url: str | None = None) -> list[dict[str, Any]]:
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
            out.append(Approval(row, votes).view(now_us, public_url))
    return out


def get_approval(store: Store, tenant: str, approval_id: str, now_us: int,
                 public_url: str | None = None) -> dict[str, Any] | None:
    with store.connect() as conn:
        row = conn.execute(select(approvals).where(
            and_(approvals.c.tenant_id == tenant, approvals.c.id == approval_id))).first()
        if row is None:
            return None
        votes = [_plain(v) for v in conn.execute(
            select(approval_votes.c.principal, approval_votes.c.key_id, approval_votes.c.decision,
                   approval_votes.c.reason, approval_votes.c.mfa, approval_votes.c.created_us)
            .where(approval_votes.c.approval_id == approval_id).order_by(approval_votes.c.id))]
    return Approval(_plain(row), votes).view(now_us, public_url)


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
