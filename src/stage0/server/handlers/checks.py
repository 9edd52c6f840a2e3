"""``/check`` inside the transaction: the key's scope and plan, a repeated request id (replayed
or refused), the quota, the decision (the early one, or evaluated here with the run state and
approvals of the transaction), the approval request of a DEFER, the token of an ALLOW, and the
log row."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from stage0.contract import CheckRequest
from stage0.contract.response import ResponseBody
from stage0.engine.approvals import Requester
from stage0.policy import normalize_name
from stage0.policy.compiled import ApprovalRule
from stage0.server import metrics
from stage0.server.handlers import tokens
from stage0.server.handlers.common import action_summary, to_us
from stage0.server.jobs import EarlyDecision, Job, Outcome, error_body
from stage0.store.keys import ApiKey, normalize_principal
from stage0.store.ledger import ChainCursor, LogRecord
from stage0.store.statements import Answer, UsageRow, answer_one, usage_one
from stage0.store.transaction import Transaction
from stage0.store.usage import Counts, Windows, check_quota

if TYPE_CHECKING:
    from stage0.server.writer import Writer

NEEDS_APPROVAL = frozenset(
    {"APPROVAL_REQUIRED_PENDING", "APPROVAL_EXPIRED", "APPROVAL_SCOPE_MISMATCH",
     "APPROVAL_TIMED_OUT", "APPROVAL_REQUESTER_MISMATCH"})
FALLBACK_RULE = ApprovalRule(1, frozenset(), False, 86400.0, 900.0)


def handle(writer: Writer, tx: Transaction, job: Job) -> Outcome:
    key, rid = job.key, job.request_id
    if key is None:
        return Outcome(401, error_body(401, "Invalid or missing API key", rid,
                                              code="API_KEY_INVALID"))
    # ``key.can("check")``, inlined: this runs for every check
    if "check" not in key.scopes and "admin" not in key.scopes:
        return Outcome(403, error_body(403, "This key lacks the `check` scope", rid,
                                              code="SCOPE_MISSING"))
    tenant = key.tenant_id
    now = writer.clock()
    early = writer.early.usable(job, tenant, now)
    if early is not None:
        now = early.now  # the decision's instant, for everything logged with it
    if job.client_request_id:
        replayed = _replay(tx, job, tenant)
        if replayed is not None:
            return replayed
    chain = tx.chain(tenant)
    if job.invalid is not None or job.request is None:
        return _rejected(writer, tx, chain, job, key, now)
    request = job.request
    if request.pro and key.plan != "pro":
        return Outcome(402, error_body(402, "Pro checks require a paid plan", rid,
                                              code="PRO_PLAN_REQUIRED"))
    refused = _meter(tx, key, rid, now)
    if refused is not None:
        return refused
    return _decide(writer, tx, chain, job, key, request, early, now)


def _replay(tx: Transaction, job: Job, tenant: str) -> Outcome | None:
    """The answer to a request id used before (the same body), a 409 (another body), or
    ``None`` (a new request id)."""
    rid = job.request_id
    previous = tx.answered.get((tenant, rid))
    if previous is None:
        if (tenant, rid) in tx.replays:
            previous = tx.replays[(tenant, rid)]
        else:
            row = tx.fetch_one(answer_one, {"t": tenant, "r": rid})
            previous = Answer._make(row) if row is not None else None
    if previous is None:
        return None
    if previous.input_sha256 != job.input_sha256:
        return Outcome(409, error_body(
            409, f"Request id `{rid}` was already used with a different body", rid,
            code="REQUEST_ID_REUSED"))
    body = orjson.loads(previous.response)
    if isinstance(body, dict) and "verdict" in body and previous.http_status == 200:
        body["cached"] = True
    return Outcome(int(previous.http_status), body, {"idempotent-replay": "true"})


def _rejected(writer: Writer, tx: Transaction, chain: ChainCursor, job: Job, key: ApiKey,
              now: datetime) -> Outcome:
    """A body that is not a valid request: 422, logged as ``rejected``."""
    assert job.invalid is not None
    body = {**job.invalid.to_dict(), "request_id": job.request_id, "code": "REQUEST_INVALID",
            "verdict": "DENY", "decision": "NO_GO"}
    tx.log(chain, record(writer, job, key, now, 422, "rejected", body, None))
    metrics.count_answer("DENY", [])
    return Outcome(422, body)


def _meter(tx: Transaction, key: ApiKey, rid: str, now: datetime) -> Outcome | None:
    """Count the check against the key's quotas; the refusal when it does not fit."""
    windows = tx.windows = tx.windows or Windows.at(now)
    counts = tx.usage.get(key.id)
    if counts is None:
        if key.id in tx.usage_rows:
            row = tx.usage_rows[key.id]
        else:
            found = tx.fetch_one(usage_one, {"k": key.id})
            row = UsageRow._make(found) if found is not None else None
        counts = Counts.current(row, windows)
    refusal = check_quota(counts, windows, monthly=key.monthly_quota,
                          daily=key.daily_quota, per_minute=key.per_minute)
    if refusal is not None:  # counted in /metrics by the HTTP layer, as every refusal
        if refusal.retry_after is not None:
            return Outcome(
                429,
                error_body(429, refusal.detail, rid, code=refusal.code,
                           retry_after_seconds=refusal.retry_after),
                {"retry-after": str(refusal.retry_after)},
            )
        return Outcome(refusal.status,
                       error_body(refusal.status, refusal.detail, rid, code=refusal.code))
    tx.usage[key.id] = counts.plus_one()
    return None


def _decide(writer: Writer, tx: Transaction, chain: ChainCursor, job: Job, key: ApiKey,
            request: CheckRequest, early: EarlyDecision | None, now: datetime) -> Outcome:
    tx.approvals.now_us = int(now.timestamp() * 1e6)
    if early is not None:
        decision, eval_us = early.decision, early.eval_us
    else:
        writer.stats.locked_evaluations += 1
        started = time.perf_counter()
        decision = writer.engine.evaluate(
            request, at=now, request_id=job.request_id, tenant=key.tenant_id,
            input_sha256=job.input_sha256, requester=requester_of(key),
        )
        eval_us = (time.perf_counter() - started) * 1e6
    body = decision.body
    if body["verdict"] == "DEFER" and NEEDS_APPROVAL & set(decision.issue_codes):
        body["approval"] = _approval_for(writer, tx, job, key, request, body, now)
    elif body["verdict"] == "ALLOW":
        _use_approval(tx, key, body, now)
        if body["buckets"]:
            body["execution_token"] = (early.token if early is not None and early.token
                                       else tokens.sign(writer, key.tenant_id, body, now))
            writer.tally.tokens_issued += 1  # #16 item 3
    if body["verdict"] != "ALLOW" and body["issues"]:  # #16 item 3: loop-limit hits
        writer.tally.loop_limits(body["issues"])
    if job.trace is not None:  # #16 item 2: what the decision's span reports
        job.trace.body = body
    encoded = decision.to_json()
    tx.log(chain, record(writer, job, key, now, 200, "decision", body, eval_us, encoded))
    metrics.count_answer(body["verdict"], body["buckets"],
                         fail_closed=body["decision"] == "ERROR")
    return Outcome(200, encoded)


def _approval_for(writer: Writer, tx: Transaction, job: Job, key: ApiKey,
                  request: CheckRequest, body: ResponseBody, now: datetime) -> dict[str, Any]:
    """The open approval request for this exact action (pending, or granted and within its
    execute-by window: the caller retries with its id), or a new one (logged)."""
    now_us = to_us(now)
    tenant, digest = key.tenant_id, body["action_digest"]
    deciding = writer.by_version(body.get("policy_version"))
    rule = deciding.approval_rule(body["buckets"]) if deciding is not None else FALLBACK_RULE
    binding, fields = writer.engine.binding_of(request, digest)  # what the engine checks
    approval = tx.approvals.open_for(tenant, digest, now_us, binding, requester_of(key),
                                     rule.bound_to)
    if approval is None:
        ctx = request.context
        approval = tx.approvals.create(
            tenant=tenant, digest=digest, action=action_summary(request, body),
            buckets=list(body["buckets"]), environment=body.get("environment"),
            request_id=job.request_id, key_id=key.id, principal=key.principal,
            actor_id=ctx.actor_id if ctx is not None else None,
            policy_version=body["policy_version"], rule=rule, now_us=now_us,
            binding=binding, bound_fields=fields,
        )
        tx.event(key, now, "approval.created", approval,
                 {"approval_id": approval.id, "request_id": job.request_id})
        writer.tally.approval_created()  # #16 item 3
    return approval.view(now_us, tx.approvals.public_url)


def requester_of(key: ApiKey) -> Requester:
    """The caller an approval is bound to: the key, and its canonical principal."""
    return Requester(key.id, normalize_principal(key.principal))


def _use_approval(tx: Transaction, key: ApiKey, body: ResponseBody, now: datetime) -> None:
    """A server-side approval allows its action once: mark it used (and log it)."""
    check = body["guardrail_checks"].get("approval", {})
    approval_id = check.get("approval_id")
    if not (check.get("verified") and approval_id):
        return
    approval = tx.approvals.get(key.tenant_id, str(approval_id))
    if approval is None:
        return
    tx.approvals.set_status(approval, "used", to_us(now), used_by=body["request_id"])
    tx.event(key, now, "approval.used", approval, {"request_id": body["request_id"]})


def record(writer: Writer, job: Job, key: ApiKey, now: datetime, status: int, kind: str,
           body: Mapping[str, Any], eval_us: float | None, encoded: bytes | None = None,
           ) -> LogRecord:
    """The log row of an answered check."""
    logged, masked = job.logged_request()
    policy = writer.policy
    return {
        "tenant_id": key.tenant_id,
        "request_id": job.request_id,
        "key_id": key.id,
        "kind": kind,
        "http_status": status,
        "verdict": body.get("verdict", "DENY"),
        "decision": body.get("decision", "NO_GO"),
        "policy_version": body.get("policy_version") or writer.policy_version,
        "policy_sha256": body.get("policy_sha256") or (
            policy.sha256 if policy is not None else ""),
        "input_sha256": job.input_sha256,
        "action_digest": body.get("action_digest", ""),
        "environment": body.get("environment"),
        "tools": orjson.dumps(
            sorted({normalize_name(t) for t in job.request.tools or []}) if job.request else []
        ).decode(),
        "buckets": orjson.dumps(body.get("buckets", [])).decode(),
        "request": logged,
        "redacted_paths": masked,
        "response": (encoded or orjson.dumps(body)).decode(),
        "frozen_time": writer.frozen_time,
        "timings": orjson.dumps({
            "parse_us": round(job.parse_us, 1),
            "eval_us": None if eval_us is None else round(eval_us, 1),
            # a duration: the monotonic timer, not the injected clock
            "queued_us": round((time.perf_counter() - job.started) * 1e6, 1),
        }).decode(),
        "created_us": int(now.timestamp() * 1_000_000),
    }
