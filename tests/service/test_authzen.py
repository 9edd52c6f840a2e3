"""The AuthZEN front door (docs/authzen.md) on SQLite and PostgreSQL: the routes, the mapping,
the three evaluation semantics, errors (never `decision: true`), the decision-log rows, a DEFER's
approval in `context` and the re-evaluation that uses it, request ids and replays, quotas."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from stage0.store import ledger
from tests.service.conftest import Api

EVALUATION = "/access/v1/evaluation"
EVALUATIONS = "/access/v1/evaluations"
ALICE = {"type": "user", "id": "alice@acme.example", "properties": {"department": "support"}}
READ = {"subject": ALICE, "action": {"name": "tickets.search"},
        "resource": {"type": "ticket", "id": "1042"}, "context": {"environment": "staging"}}
DELETE = {"subject": ALICE,
          "action": {"name": "records.update", "properties": {"side_effects": ["write"]}},
          "resource": {"type": "record", "id": "7"}}
REFUND = {
    "subject": {"type": "agent", "id": "agent-7"},
    "action": {"name": "payments.refund", "properties": {
        "side_effects": ["money movement"], "constraints": ["approval required"],
        "success_criteria": ["The customer is refunded"],
        "arguments": {"amount": 120, "currency": "EUR"}}},
    "resource": {"type": "order", "id": "1042"},
    "context": {"environment": "production"},
}


def post(api: Api, path: str, body: Any, key: str | None = None,
         **headers: str) -> httpx.Response:
    return api.client.post(path, json=body, headers={"x-api-key": key or api.key, **headers})


def logged(api: Api, request_id: str) -> dict[str, Any]:
    r = api.client.get(f"/v1/decisions/{request_id}", headers={"x-api-key": api.key})
    assert r.status_code == 200, r.text
    return dict(r.json())


# -- POST /access/v1/evaluation ------------------------------------------------------------------


def test_an_allow_is_true_and_logged_like_a_check(api: Api) -> None:
    rid = str(uuid.uuid4())
    r = post(api, EVALUATION, READ, **{"X-Request-ID": rid})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == rid
    body = r.json()
    assert body["decision"] is True
    ctx = body["context"]
    assert ctx["verdict"] == "ALLOW"
    assert ctx["request_id"] == rid
    assert ctx["policy_version"] == "stage0-policy-pack@1.0.0"
    assert {i["code"] for i in ctx["issues"]} <= {"MISSING_SUCCESS_CRITERIA",
                                                   "UNCLEAR_VALUE_SIGNAL"}
    assert ctx["reason"]
    row = logged(api, rid)
    assert (row["kind"], row["http_status"], row["verdict"]) == ("decision", 200, "ALLOW")
    assert row["tools"] == ["tickets.search"]
    assert row["request"] == READ  # the log keeps the AuthZEN body as the PEP sent it


def test_the_mapping_onto_the_check_request(api: Api) -> None:
    """subject -> actor, action -> tool and its properties, resource -> scope and targets,
    the whole tuple -> arguments (and so the action digest)."""
    body = {"subject": {"type": "user", "id": "u-1", "properties": {"role": "sre"}},
            "action": {"name": "db.query", "properties": {"constraints": ["required_role: sre"]}},
            "resource": {"type": "table", "id": "orders"}}
    ctx = post(api, EVALUATION, body).json()["context"]
    assert ctx["verdict"] == "ALLOW", ctx["reason"]  # actor_role came from subject.properties
    wrong = {**body, "subject": {"type": "user", "id": "u-1", "properties": {"role": "intern"}}}
    denied = post(api, EVALUATION, wrong).json()
    assert denied["decision"] is False
    assert "ROLE_NOT_AUTHORIZED" in {i["code"] for i in denied["context"]["issues"]}
    assert denied["context"]["action_digest"] != ctx["action_digest"]  # the subject is bound
    scoped = {**body, "action": {"name": "db.query",
                                 "properties": {"constraints": ["resource_scope: table:*"]}}}
    assert post(api, EVALUATION, scoped).json()["decision"] is True
    elsewhere = {**scoped, "resource": {"type": "bucket", "id": "logs"}}
    out = post(api, EVALUATION, elsewhere).json()
    assert out["decision"] is False
    assert "RESOURCE_SCOPE_VIOLATION" in {i["code"] for i in out["context"]["issues"]}


def test_a_deny_is_false_with_its_reason(api: Api) -> None:
    r = post(api, EVALUATION, DELETE)
    assert r.status_code == 200
    body = r.json()
    assert body["decision"] is False
    assert body["context"]["verdict"] == "DENY"
    assert "SIDE_EFFECTS_NEED_GUARDRAILS" in body["context"]["reason"]
    assert logged(api, body["context"]["request_id"])["verdict"] == "DENY"


def test_a_defer_is_false_and_carries_its_approval(api: Api) -> None:
    agent = api.new_key(scopes=["check"], principal="bot")
    approver = api.new_key(scopes=["approve"], principal="dana")
    first = post(api, EVALUATION, REFUND, key=agent).json()
    assert first["decision"] is False  # a DEFER is never `decision: true`
    ctx = first["context"]
    assert ctx["verdict"] == "DEFER"
    approval = ctx["approval"]
    aid = approval["id"]
    assert approval["approval_id"] == aid
    assert approval["status"] == "pending"
    assert approval["url"] == f"http://testserver/v1/approvals/{aid}"
    task = ctx["access_request"]["task"]
    assert (task["id"], task["status"], task["status_endpoint"]) == (aid, "pending",
                                                                     approval["url"])
    assert ctx["access_request"]["expires_at"] == approval["expires_at"]
    assert api.client.get(approval["url"], headers={"x-api-key": agent}).status_code == 200
    assert logged(api, ctx["request_id"])["verdict"] == "DEFER"
    # the same request again: the same open approval request, not a second one
    again = post(api, EVALUATION, REFUND, key=agent).json()
    assert again["context"]["approval"]["id"] == aid

    granted = api.client.post(f"/v1/approvals/{aid}/approve", json={"reason": "ok"},
                              headers={"x-api-key": approver})
    assert granted.json()["status"] == "approved", granted.text
    # another subject cannot ride on it: the subject is part of the action digest
    other = {**REFUND, "subject": {"type": "agent", "id": "agent-8"},
             "context": {**REFUND["context"], "approval": {"id": aid}}}
    refused = post(api, EVALUATION, other, key=agent).json()
    assert refused["decision"] is False
    assert "APPROVAL_SCOPE_MISMATCH" in {i["code"] for i in refused["context"]["issues"]}
    # the re-evaluation of the access-request profile: context.approval.id
    retry = {**REFUND, "context": {**REFUND["context"], "approval": {"id": aid}}}
    allowed = post(api, EVALUATION, retry, key=agent).json()
    assert allowed["decision"] is True, allowed["context"]["reason"]
    assert allowed["context"]["execution_token"].count(".") == 2
    consumed = api.client.post("/v1/tokens/consume", headers={"x-api-key": agent}, json={
        "token": allowed["context"]["execution_token"],
        "action_digest": allowed["context"]["action_digest"]})
    assert consumed.status_code == 200, consumed.text
    # used once: a second re-evaluation is not an ALLOW
    assert post(api, EVALUATION, retry, key=agent).json()["decision"] is False


def test_keys_bearer_scopes_and_tenancy(api: Api) -> None:
    assert api.client.post(EVALUATION, json=READ, headers={
        "Authorization": f"Bearer {api.key}"}).json()["decision"] is True
    missing = api.client.post(EVALUATION, json=READ)
    assert missing.status_code == 401
    assert missing.json()["decision"] is False
    assert missing.json()["code"] == "API_KEY_INVALID"
    metrics = api.client.get("/metrics").text  # counted under its own route
    assert any('route="/access/v1/evaluation"' in line and 'status="401"' in line
               for line in metrics.splitlines() if line.startswith("stage0_refused_total"))
    wrong = post(api, EVALUATION, READ, key="s0_live_not-a-key")
    assert (wrong.status_code, wrong.json()["decision"]) == (401, False)
    audit = api.new_key(scopes=["audit:read"])
    scope = post(api, EVALUATION, READ, key=audit)
    assert (scope.status_code, scope.json()["code"]) == (403, "SCOPE_MISSING")
    other = api.new_key(tenant="other")
    rid = post(api, EVALUATION, READ, key=other).json()["context"]["request_id"]
    assert api.client.get(f"/v1/decisions/{rid}",
                          headers={"x-api-key": api.key}).status_code == 404  # not our tenant


def test_bad_input_is_a_400_naming_the_field_and_logged(api: Api) -> None:
    before = ledger.count(api.store)
    cases: list[tuple[Any, str]] = [
        ({"subject": ALICE, "action": {"name": "tickets.search"}}, "resource"),
        ({**READ, "subject": {"type": 7, "id": "x"}}, "subject.type"),
        ({**READ, "action": {"name": ""}}, "action.name"),
        ({**READ, "action": {"name": "tickets\x00search"}}, "action.name"),
        ({**READ, "context": {"record_count": "many"}}, "context.record_count"),
        ({**READ, "context": {"actor_id": "mallory"}}, "context.actor_id"),
        ({**READ, "action": {"name": "x", "properties": {"side_effects": "write"}}},
         "action.properties.side_effects"),
        ({**READ, "resource": {"type": "t", "id": "1", "properties": []}},
         "resource.properties"),
        ([READ], "(body)"),
    ]
    for body, field in cases:
        r = post(api, EVALUATION, body)
        assert r.status_code == 400, (field, r.text)
        out = r.json()
        assert out["decision"] is False
        assert out["code"] == "REQUEST_INVALID"
        assert field in [e["field"] for e in out["errors"]], (field, out["errors"])
        assert field in out["detail"]
    assert ledger.count(api.store) == before + len(cases)  # each one logged as rejected
    dup = api.client.post(EVALUATION, content=b'{"subject": {}, "subject": {}}',
                          headers={"x-api-key": api.key, "content-type": "application/json"})
    assert dup.status_code == 400
    assert dup.json()["errors"][0]["type"] == "json_duplicate_key"
    nan = api.client.post(EVALUATION, content=b'{"subject": NaN}',
                          headers={"x-api-key": api.key, "content-type": "application/json"})
    assert (nan.status_code, nan.json()["decision"]) == (400, False)
    text = api.client.post(EVALUATION, content=b"subject=alice",
                           headers={"x-api-key": api.key, "content-type": "text/plain"})
    assert (text.status_code, text.json()["code"]) == (415, "CONTENT_TYPE_UNSUPPORTED")
    row = ledger.get(api.store, "default", dup.json()["request_id"])
    assert row is not None
    assert row["kind"] == "rejected"


def test_request_ids_and_replays(api: Api) -> None:
    rid = str(uuid.uuid4())
    first = post(api, EVALUATION, READ, **{"X-Request-ID": rid}).json()
    before = ledger.count(api.store)
    replay = post(api, EVALUATION, READ, **{"X-Request-ID": rid})
    assert replay.json()["decision"] is True
    assert replay.json()["context"]["cached"] is True
    assert replay.json()["context"]["request_id"] == first["context"]["request_id"]
    assert ledger.count(api.store) == before  # not decided, not logged again
    reused = post(api, EVALUATION, DELETE, **{"X-Request-ID": rid})
    assert reused.status_code == 409
    assert reused.json()["decision"] is False
    # AuthZEN's identifier is any string: echoed as sent, while the decision gets its own id
    free = post(api, EVALUATION, READ, **{"X-Request-ID": "pep-req-42"})
    assert free.headers["x-request-id"] == "pep-req-42"
    uuid.UUID(free.json()["context"]["request_id"])
    # without one, the decision's id
    plain = post(api, EVALUATION, READ)
    assert plain.headers["x-request-id"] == plain.json()["context"]["request_id"]


def test_quotas_hold(api: Api) -> None:
    capped = api.new_key(plan="free", unlimited=False, monthly_quota=2)
    assert post(api, EVALUATION, READ, key=capped).status_code == 200
    batch = post(api, EVALUATIONS, {"subject": ALICE, "action": {"name": "tickets.search"},
                                    "evaluations": [{"resource": {"type": "ticket", "id": "1"}},
                                                    {"resource": {"type": "ticket", "id": "2"}}]},
                 key=capped)
    assert batch.status_code == 200
    answers = batch.json()["evaluations"]
    assert answers[0]["decision"] is True
    assert answers[1]["decision"] is False
    assert answers[1]["context"]["error"]["status"] == 402
    over = post(api, EVALUATION, READ, key=capped)
    assert (over.status_code, over.json()["decision"]) == (402, False)
    assert over.json()["detail"] == "Monthly quota exceeded"


# -- POST /access/v1/evaluations ------------------------------------------------------------------


def _three() -> dict[str, Any]:
    """allow, deny, allow: one subject as the default, the second action overridden."""
    return {"subject": ALICE, "action": {"name": "tickets.search"},
            "context": {"environment": "staging"},
            "evaluations": [
                {"resource": {"type": "ticket", "id": "1"}},
                {"action": DELETE["action"], "resource": {"type": "record", "id": "7"}},
                {"resource": {"type": "ticket", "id": "3"}}]}


def test_the_three_evaluation_semantics(api: Api) -> None:
    cases = [(None, [True, False, True]), ("execute_all", [True, False, True]),
             ("deny_on_first_deny", [True, False]), ("permit_on_first_permit", [True])]
    for semantic, expected in cases:
        body = _three()
        if semantic is not None:
            body["options"] = {"evaluations_semantic": semantic}
        before = ledger.count(api.store)
        r = post(api, EVALUATIONS, body)
        assert r.status_code == 200, r.text
        answers = r.json()["evaluations"]
        assert [a["decision"] for a in answers] == expected, semantic
        assert ledger.count(api.store) == before + len(expected)  # the rest never ran
        if semantic in ("deny_on_first_deny", "permit_on_first_permit"):
            assert answers[-1]["context"]["evaluations_semantic"] == semantic
        assert answers[1 if len(answers) > 1 else 0]["context"]["request_id"]
    first_deny = {**_three(), "options": {"evaluations_semantic": "deny_on_first_deny"}}
    first_deny["evaluations"] = first_deny["evaluations"][1:]
    assert [a["decision"] for a in post(api, EVALUATIONS, first_deny).json()[
        "evaluations"]] == [False]
    bad = post(api, EVALUATIONS, {**_three(), "options": {"evaluations_semantic": "any"}})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "options.evaluations_semantic"


def test_defaults_items_and_per_evaluation_errors(api: Api) -> None:
    body = _three()
    body["evaluations"][1] = {"resource": {"type": "ticket"}}  # no id
    body["evaluations"].append("not an object")
    answers = post(api, EVALUATIONS, body).json()["evaluations"]
    assert [a["decision"] for a in answers] == [True, False, True, False]
    error = answers[1]["context"]["error"]
    assert error["status"] == 400
    assert [e["field"] for e in error["errors"]] == ["evaluations.1.resource.id"]
    assert answers[3]["context"]["error"]["errors"][0]["field"] == "evaluations.3"
    row = ledger.get(api.store, "default", answers[1]["context"]["request_id"])
    assert row is not None
    assert row["kind"] == "rejected"
    # without `evaluations`: one evaluation, answered as on /access/v1/evaluation
    single = post(api, EVALUATIONS, READ).json()
    assert single["decision"] is True
    assert "evaluations" not in single
    for envelope, field in [({"evaluations": {"1": READ}}, "evaluations"),
                            ({"evaluations": [READ] * 201}, "evaluations"),
                            ({**READ, "options": []}, "options")]:
        r = post(api, EVALUATIONS, envelope)
        assert (r.status_code, r.json()["errors"][0]["field"]) == (400, field)
        assert r.json()["decision"] is False
    assert post(api, EVALUATIONS, _three(), key="s0_live_nope").status_code == 401


def test_a_retried_batch_replays_each_evaluation(api: Api) -> None:
    rid = str(uuid.uuid4())
    first = post(api, EVALUATIONS, _three(), **{"X-Request-ID": rid})
    assert first.headers["x-request-id"] == rid
    ids = [a["context"]["request_id"] for a in first.json()["evaluations"]]
    assert ids == [str(uuid.uuid5(uuid.UUID(rid), f"evaluations/{i}")) for i in range(3)]
    before = ledger.count(api.store)
    again = post(api, EVALUATIONS, _three(), **{"X-Request-ID": rid}).json()["evaluations"]
    assert [a["context"].get("cached") for a in again] == [True, True, True]
    assert [a["decision"] for a in again] == [True, False, True]
    assert ledger.count(api.store) == before


# -- GET /.well-known/authzen-configuration, OpenAPI ---------------------------------------------


def test_the_pdp_metadata(api: Api) -> None:
    r = api.client.get("/.well-known/authzen-configuration")  # no key: public metadata
    assert r.status_code == 200
    assert r.json() == {
        "policy_decision_point": "http://testserver",
        "access_evaluation_endpoint": "http://testserver/access/v1/evaluation",
        "access_evaluations_endpoint": "http://testserver/access/v1/evaluations",
    }
    assert "max-age" in r.headers["cache-control"]


def test_the_routes_are_in_the_openapi_document(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    for path in (EVALUATION, EVALUATIONS):
        op = paths[path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert {"200", "400", "401"} <= set(op["responses"])
    assert "get" in paths["/.well-known/authzen-configuration"]
