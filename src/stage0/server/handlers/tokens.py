"""Execution tokens: signing one for an ALLOW, and consuming one (once)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from stage0.contract.response import ResponseBody
from stage0.server.handlers.common import authenticated, refusal, to_us
from stage0.server.jobs import Job, Outcome
from stage0.store.signing import TokenError
from stage0.store.statements import token_use, token_used
from stage0.store.transaction import Transaction

if TYPE_CHECKING:
    from stage0.server.writer import Writer


def sign(writer: Writer, tenant: str, body: ResponseBody, now: datetime) -> str:
    """The execution token of an ALLOW (``body``) for ``tenant``."""
    policy = writer.policy
    ttl = policy.token_ttl if policy is not None else 60.0
    issuer = policy.token_issuer if policy is not None else "stage0"
    approval = body["guardrail_checks"].get("approval", {})
    iat = int(now.timestamp())
    return writer.keyring.sign({
        "iss": issuer,
        "sub": tenant,
        "jti": body["request_id"],
        "action_digest": body["action_digest"],
        "policy_version": body["policy_version"],
        "buckets": list(body["buckets"]),
        "approval_id": approval.get("approval_id") if approval.get("verified") else None,
        "approval_verified": bool(approval.get("verified")),
        "break_glass": approval.get("kind") == "break_glass",
        # what only the caller's word satisfied (approval_status, mfa_verified, ...): #15
        "caller_asserted": list(
            body["guardrail_checks"].get("evidence", {}).get("caller_asserted", [])),
        "environment": body.get("environment"),
        "iat": iat,
        "exp": iat + int(ttl),
    })


def handle(writer: Writer, tx: Transaction, job: Job) -> Outcome:
    """Consume an execution token: valid, this tenant's, this action's, not used before."""
    found = authenticated(writer, job)
    if isinstance(found, Outcome):
        return found
    key, now = found
    rid, p = job.request_id, job.payload

    def refuse(status: int, code: str, detail: str) -> Outcome:
        tx.event(key, now, "token.refused", None, {"code": code},
                 digest=str(p.get("action_digest") or "")[:64])
        writer.tally.token_refused(code)  # #16 item 3
        return refusal(status, code, detail, rid)

    if not key.can("check"):
        return refuse(403, "TOKEN_SCOPE_MISSING",
                      "Consuming execution tokens needs the `check` scope")
    try:
        claims = writer.keyring.verify(str(p.get("token") or ""), now.timestamp())
    except TokenError as exc:
        return refuse(401, "TOKEN_INVALID", f"The execution token is not valid: {exc}")
    if claims.get("sub") != key.tenant_id:
        return refuse(401, "TOKEN_WRONG_TENANT", "The token was issued to another tenant")
    if claims.get("action_digest") != p.get("action_digest"):
        return refuse(401, "TOKEN_DIGEST_MISMATCH",
                      "The token was issued for a different action")
    jti = str(claims.get("jti"))
    if tx.fetch_one(token_used, {"j": jti, "t": key.tenant_id}) is not None:
        return refuse(409, "TOKEN_ALREADY_CONSUMED", "The token has already been used")
    tx.cursor.execute(tx.sql(token_use), {"jti": jti, "tenant_id": key.tenant_id,
                                          "key_id": key.id, "consumed_us": to_us(now)})
    body = {"consumed": True, "jti": jti, "request_id": jti,
            "action_digest": claims.get("action_digest"),
            "approval_id": claims.get("approval_id"), "buckets": claims.get("buckets"),
            "policy_version": claims.get("policy_version"),
            "consumed_at": now.timestamp(), "consumed_by": key.principal or key.id}
    tx.event(key, now, "token.consumed", None, body,
             digest=str(claims.get("action_digest")),
             environment=claims.get("environment"),
             buckets=list(claims.get("buckets") or []))
    writer.tally.token_consumed()  # #16 item 3
    return Outcome(200, body)
