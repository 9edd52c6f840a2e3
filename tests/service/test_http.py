"""The HTTP API in-process (FastAPI TestClient), on SQLite and PostgreSQL alike."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from stage0.store import ledger
from stage0.store.keys import create_key, revoke_key
from tests.conftest import EXAMPLES, Example
from tests.helpers import request
from tests.service.conftest import Api, running_app

BY_TIME = {t: list(g) for t, g in itertools.groupby(
    sorted(EXAMPLES, key=lambda e: e.evaluated_at), key=lambda e: e.evaluated_at)}


@pytest.mark.parametrize("evaluated_at", sorted(BY_TIME))
def test_examples_through_http(db_url: str, evaluated_at: str) -> None:
    with running_app(db_url, frozen_time=evaluated_at) as api:
        for example in BY_TIME[evaluated_at]:
            key = api.new_key(tenant=f"t-{example.name}")  # own tenant: own run state
            response = api.check(example.request, key=key)
            assert response.status_code == 200, response.text
            body = response.json()
            Example.check(example, body)
            record = ledger.get(api.store, f"t-{example.name}", body["request_id"])
            assert record is not None
            assert record["verdict"] == body["verdict"]
            assert record["frozen_time"] == evaluated_at


def test_a_hosted_api_client_works_unchanged(api: Api) -> None:
    """Only base URL and key change: POST /check with x-api-key, GET /usage."""
    response = api.client.post("/check", headers={"x-api-key": api.key},
                               content=b'{"goal": "Summarize the open incidents for the team"}')
    assert response.status_code == 200
    body = response.json()
    assert body["verdict"] in {"ALLOW", "DEFER", "DENY"}
    assert response.headers["x-request-id"] == body["request_id"]
    usage = api.client.get("/usage", headers={"x-api-key": api.key}).json()
    assert set(usage) == {
        "request_id", "api_key_id", "plan", "month_key", "monthly_used", "monthly_quota",
        "monthly_remaining", "day_key", "daily_used", "daily_quota", "daily_remaining",
        "per_minute_limit", "minute_used", "minute_remaining", "environment", "source",
        "evaluated_at"}
    assert usage["monthly_used"] == 1


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "s0_wrong"}, {"x-api-key": ""}])
def test_401_shape(api: Api, headers: dict[str, str]) -> None:
    response = api.client.post("/check", json=request(), headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"detail", "request_id", "code"}
    assert body["code"] == "API_KEY_INVALID"
    uuid.UUID(body["request_id"])


def test_revoked_key_is_refused_at_once(api: Api) -> None:
    key = api.new_key()
    assert api.check(request(), key=key).status_code == 200
    key_id = next(k.id for k in __import__("stage0.store.keys", fromlist=["x"]).list_keys(
        api.store) if k.prefix == key[:10])
    revoke_key(api.store, key_id)
    assert api.check(request(), key=key).status_code == 401
    assert api.client.get("/usage", headers={"x-api-key": key}).status_code == 401


def test_bearer_authorization_is_accepted(api: Api) -> None:
    response = api.client.post("/check", json=request(),
                               headers={"authorization": f"Bearer {api.key}"})
    assert response.status_code == 200


def test_scopes(api: Api) -> None:
    audit_only = api.new_key(scopes=["audit:read"])
    response = api.check(request(), key=audit_only)
    assert response.status_code == 403
    assert response.json()["code"] == "SCOPE_MISSING"
    check_only = api.new_key(scopes=["check"])
    rid = api.check(request(), key=check_only).json()["request_id"]
    assert api.client.get(f"/v1/decisions/{rid}",
                          headers={"x-api-key": check_only}).status_code == 403


def test_pro_on_a_free_plan_is_402(api: Api) -> None:
    free = api.new_key(plan="free", unlimited=False)
    response = api.check(request(pro=True), key=free)
    assert response.status_code == 402
    assert response.json() == {"detail": "Pro checks require a paid plan",
                               "request_id": response.json()["request_id"],
                               "code": "PRO_PLAN_REQUIRED"}
    assert api.check(request(pro=False), key=free).status_code == 200


def test_monthly_quota_is_402(api: Api) -> None:
    key = api.new_key(unlimited=True, monthly_quota=2)
    assert [api.check(request(), key=key).status_code for _ in range(3)] == [200, 200, 402]
    body = api.check(request(), key=key).json()
    assert body["detail"] == "Monthly quota exceeded"  # CONTRACT section 8 fixes the wording
    assert body["code"] == "MONTHLY_QUOTA_EXCEEDED"
    usage = api.client.get("/usage", headers={"x-api-key": key}).json()
    assert (usage["monthly_used"], usage["monthly_quota"], usage["monthly_remaining"]) == (2, 2, 0)


@pytest.mark.parametrize(("limit", "retry"), [({"per_minute": 2}, 60), ({"daily_quota": 2}, 50400)])
def test_rate_limits_are_429_with_retry_after(api: Api, limit: dict[str, int], retry: int) -> None:
    key = api.new_key(unlimited=True, **limit)
    statuses = [api.check(request(), key=key).status_code for _ in range(2)]
    assert statuses == [200, 200]
    response = api.check(request(), key=key)
    assert response.status_code == 429
    body = response.json()
    assert set(body) == {"detail", "request_id", "code", "retry_after_seconds"}
    assert body["code"] == ("RATE_LIMIT_EXCEEDED" if "per_minute" in limit
                            else "DAILY_LIMIT_EXCEEDED")
    # the clock is frozen at 10:00:00 UTC: a minute and 14 hours remain
    assert body["retry_after_seconds"] == retry
    assert response.headers["retry-after"] == str(retry)


def test_invalid_requests_are_422_logged_and_never_allow(api: Api) -> None:
    response = api.check({"goal": "", "tools": [1]})
    assert response.status_code == 422
    body = response.json()
    assert body["verdict"] == "DENY"
    assert {e["field"] for e in body["errors"]} == {"goal", "tools.0"}
    record = ledger.get(api.store, "default", body["request_id"])
    assert record is not None
    assert (record["kind"], record["http_status"]) == ("rejected", 422)
    raw = api.client.post("/check", headers={"x-api-key": api.key}, content=b"{not json")
    assert raw.status_code == 422
    too_big = api.client.post("/check", headers={"x-api-key": api.key},
                              content=b'{"goal": "' + b"x" * 1_000_100 + b'"}')
    assert too_big.status_code == 422
    assert too_big.json()["errors"][0]["type"] == "too_large"


def test_every_answer_is_logged_with_secrets_redacted(api: Api) -> None:
    body = request(context={"password": "hunter2", "nested": {"api_key": "abc", "ok": 1},
                            "authorization": "Bearer x"},
                   arguments={"client_secret": "s", "amount": 3})
    decision = api.check(body).json()
    record = ledger.get(api.store, "default", decision["request_id"])
    assert record is not None
    assert record["request"]["context"]["password"] == "[REDACTED]"
    assert record["request"]["context"]["nested"] == {"api_key": "[REDACTED]", "ok": 1}
    assert record["request"]["arguments"]["client_secret"] == "[REDACTED]"
    assert sorted(record["redacted_paths"]) == sorted([
        "context.password", "context.nested.api_key", "context.authorization",
        "arguments.client_secret"])
    assert "hunter2" not in str(record)
    assert record["response"]["request_id"] == decision["request_id"]
    for field in ("policy_version", "policy_sha256", "input_sha256", "action_digest"):
        assert record[field] == decision[field]
    assert record["key_id"].startswith("key_")
    assert record["timings"]["eval_us"] > 0


def test_idempotent_request_ids(api: Api) -> None:
    rid = str(uuid.uuid4())
    first = api.check(request(), **{"x-request-id": rid})
    again = api.check(request(), **{"x-request-id": rid})
    assert first.status_code == again.status_code == 200
    assert first.json()["request_id"] == again.json()["request_id"] == rid
    assert again.json()["cached"] is True
    assert {k: v for k, v in again.json().items() if k != "cached"} == {
        k: v for k, v in first.json().items() if k != "cached"}
    usage = api.client.get("/usage", headers={"x-api-key": api.key}).json()
    assert usage["monthly_used"] == 1
    conflict = api.check(request(goal="Summarize a different set of tickets"),
                         **{"x-request-id": rid})
    assert conflict.status_code == 409
    assert set(conflict.json()) == {"detail", "request_id", "code"}
    assert conflict.json()["code"] == "REQUEST_ID_REUSED"


def test_an_invalid_request_id_header_is_replaced(api: Api) -> None:
    response = api.check(request(), **{"x-request-id": "not-a-uuid"})
    assert response.status_code == 200
    assert response.json()["request_id"] != "not-a-uuid"
    uuid.UUID(response.json()["request_id"])


def test_tenant_isolation(api: Api) -> None:
    a = api.new_key(tenant="tenant-a")
    b = api.new_key(tenant="tenant-b")
    rid_a = api.check(request(), key=a).json()["request_id"]
    api.check(request(), key=b)
    assert api.client.get(f"/v1/decisions/{rid_a}", headers={"x-api-key": b}).status_code == 404
    assert api.client.get(f"/v1/decisions/{rid_a}", headers={"x-api-key": a}).status_code == 200
    listed = api.client.get("/v1/decisions", headers={"x-api-key": b}).json()["items"]
    assert listed
    assert all(item["tenant"] == "tenant-b" for item in listed)
    assert rid_a not in {item["request_id"] for item in listed}


def test_run_state_is_per_tenant_in_the_store(api: Api) -> None:
    body = request(constraints=["max_iterations: 2"], context={"run_id": "run-1"})
    a, b = api.new_key(tenant="ta"), api.new_key(tenant="tb")
    assert [api.check(body, key=a).json()["verdict"] for _ in range(3)] == [
        "ALLOW", "ALLOW", "DEFER"]
    assert api.check(body, key=b).json()["verdict"] == "ALLOW"


def test_decision_listing_filters_and_pages(api: Api) -> None:
    api.check(request(tools=["payments.refund"], constraints=["approval required"]))
    api.check(request())
    api.check(request(side_effects=["write"]))
    h = {"x-api-key": api.key}
    assert {i["verdict"] for i in api.client.get(
        "/v1/decisions?verdict=DENY", headers=h).json()["items"]} == {"DENY"}
    by_bucket = api.client.get("/v1/decisions?bucket=money_movement", headers=h).json()["items"]
    assert len(by_bucket) == 1
    by_tool = api.client.get("/v1/decisions?tool=payments.refund", headers=h).json()["items"]
    assert len(by_tool) == 1
    page = api.client.get("/v1/decisions?limit=2", headers=h).json()
    assert len(page["items"]) == 2
    rest = api.client.get(f"/v1/decisions?limit=2&cursor={page['next_cursor']}",
                          headers=h).json()
    assert len(rest["items"]) == 1
    assert rest["next_cursor"] is None
    early = api.client.get("/v1/decisions?until=2020-01-01T00:00:00Z", headers=h).json()
    assert early["items"] == []
    bad = api.client.get("/v1/decisions?since=yesterday", headers=h)
    assert bad.status_code == 422
    assert set(bad.json()) >= {"detail", "request_id"}


def test_audit_chain_detects_tampering(api: Api) -> None:
    rids = [api.check(request(goal=f"Summarize ticket batch {i} for the team")).json()[
        "request_id"] for i in range(5)]
    assert all(r.ok for r in ledger.verify(api.store))
    with api.store.begin() as conn:
        conn.execute(text("UPDATE decisions SET verdict = 'DENY', decision = 'NO_GO' "
                          "WHERE request_id = :r"), {"r": rids[1]})
    problems = ledger.verify(api.store, "default")[0].problems
    assert any("seq 2" in p and "modified" in p for p in problems), problems
    with api.store.begin() as conn:
        conn.execute(text("DELETE FROM decisions WHERE request_id = :r"), {"r": rids[3]})
    problems = ledger.verify(api.store, "default")[0].problems
    assert any("seq 4..4 missing" in p for p in problems), problems
    with api.store.begin() as conn:
        conn.execute(text("DELETE FROM decisions WHERE request_id = :r"), {"r": rids[4]})
    problems = ledger.verify(api.store, "default")[0].problems
    assert any("missing at the end" in p for p in problems), problems


def test_health_readiness_metrics_openapi(api: Api) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["policy_version"] == "stage0-policy-pack@1.0.0"
    api.check(request())
    metrics = api.client.get("/metrics").text
    for name in ("stage0_decisions_total", "stage0_check_seconds", "stage0_audit_commit_seconds",
                 "stage0_audit_queue_depth", "stage0_fail_closed_total"):
        assert name in metrics
    spec = api.client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert "/check" in spec["paths"]
    assert "requestBody" in spec["paths"]["/check"]["post"]


def test_unknown_routes_share_the_error_shape(api: Api) -> None:
    response = api.client.get("/nope")
    assert response.status_code == 404
    assert set(response.json()) == {"detail", "request_id", "code"}
    assert response.json()["code"] == "NOT_FOUND"
    wrong_method = api.client.get("/check")
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()) == {"detail", "request_id", "code"}
    assert wrong_method.json()["code"] == "METHOD_NOT_ALLOWED"


def test_a_broken_policy_fails_closed_and_is_not_ready(db_url: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: stage0/v1\n")
    with running_app(db_url, policy=str(broken)) as api:
        body = api.check(request()).json()
        assert (body["verdict"], body["decision"]) == ("DENY", "ERROR")
        assert api.client.get("/readyz").status_code == 503


def test_keys_are_stored_hashed(api: Api) -> None:
    _, secret = create_key(api.store, tenant="default", name="hashed")
    with api.store.connect() as conn:
        dump = str(list(conn.execute(text("SELECT * FROM api_keys"))))
    assert secret not in dump


def test_row_hash_is_sha256_of_the_rfc8785_form(api: Api) -> None:
    import hashlib  # noqa: PLC0415

    import rfc8785  # noqa: PLC0415

    rid = api.check(request(context={"note": "é ☃ \u2028 \"quoted\" \\ back"})).json()[
        "request_id"]
    with api.store.connect() as conn:
        row = conn.execute(text("SELECT * FROM decisions WHERE request_id = :r"),
                           {"r": rid}).one()._mapping
    fields = {k: row[k] for k in ledger.HASHED_FIELDS}
    assert row["row_hash"] == hashlib.sha256(rfc8785.dumps(fields)).hexdigest()


def test_listing_events_by_kind(api: Api) -> None:
    h = {"x-api-key": api.key}
    api.check(request(tools=["payments.refund"], constraints=["approval required"]))
    decisions = api.client.get("/v1/decisions", headers=h).json()["items"]
    assert [d["kind"] for d in decisions] == ["decision"]
    everything = api.client.get("/v1/decisions?kind=all", headers=h).json()["items"]
    assert sorted(d["kind"] for d in everything) == ["approval.created", "decision"]
    created = api.client.get("/v1/decisions?kind=approval.created", headers=h).json()["items"]
    assert created[0]["response"]["approval"]["status"] == "pending"


def _comparable(response: object) -> tuple[int, object, str]:
    body = response.json()  # type: ignore[attr-defined]
    for volatile in ("request_id", "execution_token", "approval"):
        if isinstance(body, dict):
            body.pop(volatile, None)
    return (response.status_code, body,  # type: ignore[attr-defined]
            response.headers["content-type"])  # type: ignore[attr-defined]


def test_the_asgi_fast_path_answers_like_the_route(api: Api,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`POST /check` is answered straight from the ASGI call; the FastAPI route (its OpenAPI
    description) answers the same for every kind of request."""
    from stage0.server import app as app_module  # noqa: PLC0415

    fast_calls: list[int] = []
    real_fast = app_module._fast_check

    async def counted(*args: Any) -> None:
        fast_calls.append(1)
        await real_fast(*args)

    monkeypatch.setattr(app_module, "_fast_check", counted)
    app = api.client.app
    bearer = {"authorization": f"Bearer {api.key}"}
    cases: list[tuple[object, dict[str, str]]] = [
        (request(), {}),
        (request(tools=["payments.create_payout"], constraints=["approval required"]), {}),
        ({"goal": 7}, {}),
        (request(), {"x-api-key": ""}),
        (request(), {"x-api-key": "wrong"}),
        (request(), bearer),
    ]
    for body, headers in cases:
        sent = {"x-api-key": api.key, **headers}
        if "authorization" in headers:
            sent.pop("x-api-key")
        fast = api.client.post("/check", json=body, headers=sent)
        handler, app.check_handler = app.check_handler, None  # type: ignore[attr-defined]
        try:
            routed = api.client.post("/check", json=body, headers=sent)
        finally:
            app.check_handler = handler  # type: ignore[attr-defined]
        assert _comparable(fast) == _comparable(routed), (body, headers)
        assert fast.headers["x-request-id"]
        assert int(fast.headers["content-length"]) == len(fast.content)
    assert len(fast_calls) == len(cases)  # the first of each pair took the fast path, only it


def test_the_fast_path_streams_and_caps_a_large_body(api: Api) -> None:
    def chunks() -> object:
        yield b'{"goal": "a", "arguments": {"blob": "'
        for _ in range(300):  # 1.2 MB, over the 1 MB limit, sent in chunks
            yield b"x" * 4096
        yield b'"}}'

    answer = api.client.post("/check", content=chunks(),  # type: ignore[arg-type]
                             headers={"x-api-key": api.key, "content-type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["verdict"] == "DENY"
    assert f"body is {300 * 4096 + 40} bytes; the limit is" in answer.json()["detail"]


def test_the_fast_path_fails_closed_with_one_error_shape(api: Api) -> None:
    app = api.client.app
    handler = app.check_handler  # type: ignore[attr-defined]

    async def broken(*_: object) -> tuple[int, bytes, dict[str, str]]:
        raise RuntimeError("boom")

    app.check_handler = broken  # type: ignore[attr-defined]
    try:
        answer = api.client.post("/check", json=request(), headers={"x-api-key": api.key})
    finally:
        app.check_handler = handler  # type: ignore[attr-defined]
    assert answer.status_code == 500
    assert answer.json()["detail"] == "Internal error"
    assert answer.headers["x-request-id"] == answer.json()["request_id"]
