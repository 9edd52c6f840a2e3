"""Every HTTP refusal carries a catalogued ``code`` (``stage0.server.errors.CODES``): the
catalogue and docs/http.md's table agree, and each refusal, driven through the real app,
answers ``{"detail", "request_id", "code", ...}`` with its code. Tests assert codes, not
wording."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from stage0.server.errors import CODES
from stage0.server.jobs import Outcome, fail_closed_body
from stage0.server.state import state_of
from tests.helpers import request
from tests.service.conftest import Api
from tests.service.test_approvals import PAYOUT

ROOT = Path(__file__).resolve().parents[2]
REFUSAL = re.compile(r"(?:refuse\w*|ApiError|_refusal)\((\d{3}), \"([A-Z_]+)\"")
ROW = re.compile(r"^\| `([A-Z_]+)` \| (\d{3}) \| (.+) \|$")

DRIVEN_ELSEWHERE = {
    "APPROVER_ROLE_NOT_ELIGIBLE", "APPROVAL_EXPIRED", "APPROVAL_ALREADY_VOTED",
    "APPROVER_MFA_REQUIRED", "APPROVER_MFA_INVALID", "APPROVER_MFA_NOT_ENROLLED",
    "APPROVER_MFA_LOCKED", "BREAK_GLASS_DISABLED", "BREAK_GLASS_ROLE_NOT_ELIGIBLE",
    "BREAK_GLASS_REASON_REQUIRED", "BREAK_GLASS_NOT_APPLICABLE", "BREAK_GLASS_ALREADY_DECLARED",
    "TOKEN_WRONG_TENANT", "METRICS_TOKEN_INVALID",
}
"""The writer's refusals that need a strict pack, MFA or two tenants: driven by
test_approvals.py and test_break_glass.py (asserted below to be); `/metrics` behind a token:
test_metrics_ops.py."""


def documented() -> dict[str, int]:
    text = (ROOT / "docs" / "http.md").read_text("utf-8")
    section = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    return {m[1]: int(m[2]) for line in section.splitlines() if (m := ROW.match(line))}


def test_every_code_is_documented_and_every_documented_code_exists() -> None:
    docs = documented()
    assert set(docs) == set(CODES), (sorted(set(CODES) - set(docs)),
                                     sorted(set(docs) - set(CODES)))
    for name, code in CODES.items():
        assert docs[name] == code.status, name


def test_every_code_the_server_refuses_with_is_catalogued() -> None:
    """The writer's refusals (``refuse(403, "SELF_APPROVAL", ...)``) and the HTTP layer's
    (``ApiError(404, "DECISION_NOT_FOUND", ...)``) name catalogued codes, with their status."""
    found: set[tuple[str, int]] = set()
    for path in (ROOT / "src" / "stage0" / "server").rglob("*.py"):
        for m in REFUSAL.finditer(path.read_text("utf-8")):
            found.add((m[2], int(m[1])))
    assert len(found) > 20
    assert {(c, s) for c, s in found if CODES.get(c) is None or CODES[c].status != s} == set()


def test_the_codes_driven_elsewhere_are_asserted_there() -> None:
    text = "\n".join(p.read_text("utf-8") for p in (ROOT / "tests" / "service").glob("*.py")
                     if p.name != "test_errors.py")
    for name in sorted(DRIVEN_ELSEWHERE):
        assert f'"{name}"' in text, f"no test drives {name}"


class Seen:
    def __init__(self) -> None:
        self.codes: set[str] = set()

    def refused(self, response: httpx.Response, code: str) -> dict[str, Any]:
        """``response`` is the refusal ``code`` (with its catalogued status), in the one
        shape."""
        body: dict[str, Any] = response.json()
        assert (response.status_code, body.get("code")) == (CODES[code].status, code), body
        assert isinstance(body["detail"], str)
        uuid.UUID(body["request_id"])
        self.codes.add(code)
        return body


def test_every_refusal_carries_its_code(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = Seen()
    client, admin = api.client, {"x-api-key": api.key}
    check_only = api.new_key(scopes=["check"], principal="bot")
    audit_only = api.new_key(scopes=["audit:read"])
    approver = api.new_key(scopes=["approve"], principal="dana")

    # -- POST /check: the fast path's own refusal, then the writer's -----------------------
    seen.refused(client.post("/check", json=request()), "API_KEY_INVALID")
    seen.refused(api.check(request(), key="s0_wrong"), "API_KEY_INVALID")
    seen.refused(api.check(request(), key=audit_only), "SCOPE_MISSING")
    free = api.new_key(plan="free", unlimited=False)
    seen.refused(api.check(request(pro=True), key=free), "PRO_PLAN_REQUIRED")
    for limit, code in (({"monthly_quota": 1}, "MONTHLY_QUOTA_EXCEEDED"),
                        ({"daily_quota": 1}, "DAILY_LIMIT_EXCEEDED"),
                        ({"per_minute": 1}, "RATE_LIMIT_EXCEEDED")):
        key = api.new_key(unlimited=True, **limit)
        assert api.check(request(), key=key).status_code == 200
        seen.refused(api.check(request(), key=key), code)
    rid = str(uuid.uuid4())
    assert api.check(request(), **{"x-request-id": rid}).status_code == 200
    seen.refused(api.check(request(goal="Another goal entirely"), **{"x-request-id": rid}),
                 "REQUEST_ID_REUSED")
    invalid = seen.refused(api.check({"goal": 7}), "REQUEST_INVALID")
    assert (invalid["verdict"], invalid["decision"]) == ("DENY", "NO_GO")
    rid = str(uuid.uuid4())
    seen.refused(api.check({"goal": 7}, **{"x-request-id": rid}), "REQUEST_INVALID")
    seen.refused(api.check({"goal": 7}, **{"x-request-id": rid}), "REQUEST_INVALID")  # replay
    seen.refused(client.post("/check", content=b'{"goal": "Summarize the incidents"}',
                             headers={**admin, "content-type": "text/plain"}),
                 "CONTENT_TYPE_UNSUPPORTED")

    # -- routing, the decision log, usage -------------------------------------------------
    seen.refused(client.get("/nope"), "NOT_FOUND")
    seen.refused(client.get("/check"), "METHOD_NOT_ALLOWED")
    seen.refused(client.get("/usage"), "API_KEY_INVALID")
    seen.refused(client.get("/v1/decisions/x", headers={"x-api-key": check_only}),
                 "SCOPE_MISSING")
    seen.refused(client.get("/v1/decisions/x", headers=admin), "DECISION_NOT_FOUND")
    seen.refused(client.get("/v1/decisions?cursor=abc", headers=admin), "REQUEST_INVALID")
    seen.refused(client.get("/v1/decisions?since=never", headers=admin), "REQUEST_INVALID")
    seen.refused(client.get("/v1/decisions?limit=0", headers=admin), "REQUEST_INVALID")

    # -- approvals ------------------------------------------------------------------------
    seen.refused(client.get("/v1/approvals", headers={"x-api-key": check_only}),
                 "SCOPE_MISSING")
    seen.refused(client.get("/v1/approvals/apr_nope", headers=admin), "APPROVAL_NOT_FOUND")
    vote = {"reason": "ok"}
    seen.refused(client.post("/v1/approvals/apr_nope/approve", json=vote), "API_KEY_INVALID")
    seen.refused(client.post("/v1/approvals/apr_nope/approve", json={"bogus": 1},
                             headers=admin), "REQUEST_INVALID")
    seen.refused(client.post("/v1/approvals/apr_nope/approve", json=vote,
                             headers={"x-api-key": check_only}), "APPROVER_SCOPE_MISSING")
    seen.refused(client.post("/v1/approvals/apr_nope/approve", json=vote,
                             headers={"x-api-key": approver}), "APPROVAL_NOT_FOUND")
    deferred = api.check(PAYOUT, key=check_only).json()
    aid = deferred["approval"]["approval_id"]
    agent_approves = api.new_key(scopes=["check", "approve"], principal="bot")
    seen.refused(client.post(f"/v1/approvals/{aid}/approve", json=vote,
                             headers={"x-api-key": agent_approves}), "SELF_APPROVAL")
    assert client.post(f"/v1/approvals/{aid}/approve", json=vote,
                       headers={"x-api-key": approver}).status_code == 200
    seen.refused(client.post(f"/v1/approvals/{aid}/reject", json=vote,
                             headers={"x-api-key": approver}), "APPROVAL_ALREADY_DECIDED")
    seen.refused(client.post("/v1/break-glass", json={"request_id": "nope", "reason": "SEV1"},
                             headers={"x-api-key": approver}), "DECISION_NOT_FOUND")

    # -- execution tokens -----------------------------------------------------------------
    allowed = api.check({**PAYOUT, "context": {**PAYOUT["context"], "approval_id": aid}},
                        key=check_only).json()
    token, digest = allowed["execution_token"], allowed["action_digest"]

    def consume(key: str, token: str = token, digest: str = digest) -> httpx.Response:
        return client.post("/v1/tokens/consume", json={"token": token, "action_digest": digest},
                           headers={"x-api-key": key})

    seen.refused(consume(approver), "TOKEN_SCOPE_MISSING")
    seen.refused(consume(check_only, token="not.a.token"), "TOKEN_INVALID")
    seen.refused(consume(check_only, digest="0" * 64), "TOKEN_DIGEST_MISMATCH")
    assert consume(check_only).status_code == 200
    seen.refused(consume(check_only), "TOKEN_ALREADY_CONSUMED")

    # -- failed authentications back off (after STAGE0_AUTH_BACKOFF_AFTER, 10) -------------
    for _ in range(20):
        guessed = api.check(request(), key="s0_guess")
        if guessed.status_code != 401:
            break
    backing_off = seen.refused(guessed, "AUTH_BACKOFF")
    assert guessed.headers["retry-after"] == str(backing_off["retry_after_seconds"])

    # -- failures -------------------------------------------------------------------------
    app = client.app
    handler = app.check_handler  # type: ignore[attr-defined]

    async def broken(*_: object) -> tuple[int, bytes, dict[str, str]]:
        raise RuntimeError("boom")

    app.check_handler = broken  # type: ignore[attr-defined]
    try:
        seen.refused(api.check(request()), "INTERNAL_ERROR")
    finally:
        app.check_handler = handler  # type: ignore[attr-defined]

    async def stuck(job: Any) -> Outcome:  # what the writer answers when it cannot decide
        return Outcome(503, fail_closed_body(job.request_id, "No decision", "v1"))

    monkeypatch.setattr(state_of(app).pipeline, "answer", stuck)
    closed = seen.refused(api.check(request()), "FAIL_CLOSED")
    assert closed["verdict"] == "DENY"
    seen.refused(client.post("/v1/tokens/consume", json={"token": token, "action_digest": digest},
                             headers={"x-api-key": check_only}), "FAIL_CLOSED")

    assert seen.codes == set(CODES) - DRIVEN_ELSEWHERE, sorted(
        set(CODES) - DRIVEN_ELSEWHERE - seen.codes)
