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
from urllib.parse import quote

import orjson

from stage0.engine.approvals import ApprovalEvidence, Requester, foreign_requester
from stage0.policy.compiled import ApprovalRule, BoundTo
from stage0.store import statements as st
from stage0.store.database import Store
from stage0.store.keys import normalize_principal
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

    def view(self, now_us: int, public_url: str | None = None) -> dict[str, Any]:
        """The ``approval`` object of the API (CONTRACT section 6), with its console page
        (absolute under ``public_url``, the server's ``STAGE0_PUBLIC_URL``, else a path)."""
        r = self.row
        action = orjson.loads(r["action"])
        return {
            "approval_id": r["id"],
            "approval_url": approval_url(r["id"], public_url),
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
            "bound_to": r.get("bound_to") or "key",
            "bound_fields": orjson.loads(r["bound_fields"]) if r.get("bound_fields") else {},
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
            binding_digest=r.get("binding_digest"),
            bound_fields=orjson.loads(r["bound_fields"]) if r.get("bound_fields") else {},
            requested_by_key=r["requested_by_key"],
            requested_by_principal=normalize_principal(r["requested_by_principal"]),
            bound_to=r.get("bound_to") or "key",
        )

    def usable_by(self, requester: Requester | None, bound_to: BoundTo) -> bool:
        """Whether ``requester`` may use this request (what the engine would otherwise answer
        with ``APPROVAL_REQUESTER_MISMATCH``) under the deciding pack's ``bound_to``."""
        r = self.row
        return requester is None or foreign_requester(
            r.get("bound_to") or "key", bound_to, r["requested_by_key"],
            normalize_principal(r["requested_by_principal"]), requester) is None


def approval_url(approval_id: str, public_url: str | None) -> str:
    """An approval request's page on the console: where its approvers decide it."""
    path = f"/console/approvals/{quote(approval_id, safe='')}"
    return public_url.rstrip("/") + path if public_url else path


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
            "expired_ids": st.expired_approvals, "to_warn": st.approvals_to_warn,
            "warned": st.approval_warned}.items()}
        self._store = store
        self._cursor: Any = None
        self.now_us = 0
        self.public_url: str | None = None
        """The server's public base URL (``STAGE0_PUBLIC_URL``), for ``approval_url``."""
        self._open: dict[tuple[str, str], list[Approval]] = {}
        """The open requests of an action (tenant, action digest), newest first, as the
        batch's prefetch read them (all of them: ``open_for`` filters), with the requests this
        transaction creates added and the action dropped when one of its requests changes (a
        later ``open_for`` then reads it again, by binding digest)."""
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

    def _fetch(self, sql: str, params: dict[str, Any]) -> Approval | None:
        cur = self.cursor
        self.reads[sql] = self.reads.get(sql, 0) + 1
        cur.execute(self._sql[sql], params)
        row = cur.fetchone()
        if row is None:
            return None
        return self._with_votes(Approval(dict(zip(COLUMNS, row, strict=True)), []))

    def _with_votes(self, approval: Approval) -> Approval:
        """``approval`` with its votes read (once: ``votes`` is kept current by
        :meth:`record_vote`), unless it has none to read."""
        if approval.votes or _no_votes(approval.row):
            return approval
        self.cursor.execute(self._sql["votes"], {"a": approval.id})
        approval.votes = [dict(zip(VOTE_COLUMNS, v, strict=True)) for v in self.cursor.fetchall()]
        return approval

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
            for digest in wanted:
                self._open[(tenant, digest)] = []
            for row in cur.fetchall():  # newest first
                record = dict(zip(COLUMNS, row, strict=True))
                self._open[(tenant, record["action_digest"])].append(Approval(record, []))

        return finish

    def expired_pending(self, tenant: str, now_us: int) -> list[Approval]:
        cur = self.cursor
        cur.execute(self._sql["expired_ids"], {"t": tenant, "now": now_us})
        ids = [approval_id for (approval_id,) in cur.fetchall()]
        found = [self.get(tenant, i) for i in ids]
        return [a for a in found if a is not None]

    def to_warn(self, tenant: str, now_us: int, horizon_us: int) -> list[Approval]:
        """Pending requests expiring by ``horizon_us`` whose approvers were not warned yet."""
        cur = self.cursor
        cur.execute(self._sql["to_warn"], {"t": tenant, "now": now_us, "horizon": horizon_us,
                                           "window": horizon_us - now_us})
        ids = [approval_id for (approval_id,) in cur.fetchall()]
        return [a for a in (self.get(tenant, i) for i in ids) if a is not None]

    def mark_warned(self, approval: Approval, now_us: int) -> None:
        approval.row["warned_us"] = now_us
        self.cursor.execute(self._sql["warned"], {"w": now_us, "i": approval.id})

    def get(self, tenant: str, approval_id: str) -> Approval | None:
        return self._fetch("one", {"t": tenant, "i": approval_id})

    def open_for(self, tenant: str, digest: str, now_us: int, binding: str,
                 requester: Requester | None = None, bound_to: BoundTo = "key",
                 ) -> Approval | None:
        """The newest request for this exact action that can still move it forward (pending,
        or granted and within its execute-by window), bound to ``binding`` (the engine's
        binding digest) and usable by ``requester`` under ``bound_to``: from the batch's
        prefetch when it read this action, else read."""
        found = self._open.get((tenant, digest))
        if found is None:
            self.reads["open"] = self.reads.get("open", 0) + 1
            self.cursor.execute(self._sql["open"],
                                {"t": tenant, "d": digest, "b": binding, "now": now_us})
            found = [Approval(dict(zip(COLUMNS, row, strict=True)), [])
                     for row in self.cursor.fetchall()]
        for approval in found:
            r = approval.row
            if (r.get("binding_digest") == binding
                    and is_open(r["status"], r["expires_us"], r["execute_by_us"], now_us)
                    and approval.usable_by(requester, bound_to)):
                return self._with_votes(approval)
        return None

    def create(
        self, *, tenant: str, digest: str, action: dict[str, Any], buckets: list[str],
        environment: str | None, request_id: str, key_id: str, principal: str | None,
        actor_id: str | None, policy_version: str, rule: ApprovalRule, now_us: int,
        kind: str = "standard", reason: str | None = None, lifts: list[str] | None = None,
        binding: str | None = None, bound_fields: dict[str, Any] | None = None,
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
            "binding_digest": binding,
            "bound_fields": orjson.dumps(bound_fields).decode() if bound_fields else None,
            "bound_to": rule.bound_to,
            "warned_us": None,
        }
        self.cursor.execute(self._sql["insert"], record)
        approval = Approval(record, [])
        known = self._open.get((tenant, digest))
        if known is not None:  # the newest open request for the action
            known.insert(0, approval)
        return approval

    def _forget(self, approval: Approval) -> None:
        """Another copy of ``approval`` may be in an open list: read the action's again."""
        self._open.pop((approval.row["tenant_id"], approval.row["action_digest"]), None)

    def record_vote(self, approval: Approval, *, key_id: str, principal: str, decision: str,
                    reason: str, mfa: bool, now_us: int) -> None:
        self._forget(approval)
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
        self._forget(approval)
        row = approval.row
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

