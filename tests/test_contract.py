"""Request validation: every bad field named at once; never an ALLOW; null-tolerant."""

from __future__ import annotations

import json
from typing import get_type_hints

import pytest

from stage0.contract import (
    MAX_BODY_BYTES,
    CheckRequest,
    CheckResponse,
    Context,
    RequestValidationError,
    parse_request,
)
from stage0.contract.response import Decision, ResponseBody
from stage0.engine import Engine
from stage0.policy import load_policy
from stage0.sdk import CheckResult, LocalEngine
from stage0.sdk.results import failed_closed
from tests.helpers import decide, request


def fields_of(exc: RequestValidationError) -> set[str]:
    return {e.field for e in exc.errors}


@pytest.mark.parametrize(
    ("note", "body", "bad_fields"),
    [
        ("goal missing", {"tools": []}, {"goal"}),
        ("goal empty", {"goal": ""}, {"goal"}),
        ("goal blank", {"goal": "   "}, {"goal"}),
        ("goal too long", {"goal": "x" * 8001}, {"goal"}),
        ("tool not a string", {"goal": "Deploy it now", "tools": ["a", 3]}, {"tools.1"}),
        ("too many tools", {"goal": "Deploy it now", "tools": ["t"] * 201}, {"tools"}),
        ("too many side effects",
         {"goal": "Deploy it", "side_effects": ["w"] * 201},
         {"side_effects"}),
        ("pro not a bool", {"goal": "Deploy it now", "pro": "yes"}, {"pro"}),
        ("context not an object", {"goal": "Deploy it now", "context": []}, {"context"}),
        ("bad approval status", {"goal": "Deploy", "context": {"approval_status": "ok"}},
         {"context.approval_status"}),
        ("bad approved_at", {"goal": "Deploy", "context": {"approved_at": "yesterday"}},
         {"context.approved_at"}),
        ("mfa_verified as string", {"goal": "Deploy", "context": {"mfa_verified": "true"}},
         {"context.mfa_verified"}),
        ("negative record count", {"goal": "Deploy", "context": {"record_count": -1}},
         {"context.record_count"}),
        ("iteration as float", {"goal": "Deploy", "context": {"current_iteration": 1.5}},
         {"context.current_iteration"}),
        ("several at once", {"goal": "", "tools": [1], "pro": 3}, {"goal", "tools.0", "pro"}),
        ("look-alike letters in a tool name",
         {"goal": "Release the payout", "tools": ["ok", "p\u0430yout"]}, {"tools.1"}),
        ("a blank side effect", {"goal": "Release the payout", "side_effects": [" "]},
         {"side_effects.0"}),
        ("an unknown field with a huge integer",
         {"goal": "Release the payout", "x": 2**70}, {"x"}),
        ("a context extra with a huge integer",
         {"goal": "Release the payout", "context": {"n": [2**60]}}, {"context.n.0"}),
        ("an iteration beyond 2**53", {"goal": "Deploy", "context": {"current_iteration": 2**60}},
         {"context.current_iteration"}),
        ("environment contradicts context",
         {"goal": "Deploy it", "environment": "prod", "context": {"environment": "staging"}},
         {"environment"}),
    ],
)
def test_invalid_requests_name_each_bad_field(
    note: str, body: dict[str, object], bad_fields: set[str]
) -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_request(body)
    assert fields_of(info.value) == bad_fields, note
    assert info.value.issue.code == "REQUEST_INVALID"
    assert info.value.issue.effect == "DENY"


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[1,2]", b'"goal"', b"null", b'{"goal": "x",}', b"\xff\xfe"],
)
def test_non_objects_are_rejected(raw: bytes) -> None:
    with pytest.raises(RequestValidationError):
        parse_request(raw)


def test_a_lone_surrogate_in_text_is_a_validation_error() -> None:
    with pytest.raises(RequestValidationError):
        parse_request('{"goal": "Deploy \ud800 now"}')


def test_body_size_limit() -> None:
    body = json.dumps({"goal": "Deploy it", "context": {"blob": "x" * MAX_BODY_BYTES}})
    with pytest.raises(RequestValidationError) as info:
        parse_request(body.encode())
    assert info.value.errors[0].type == "too_large"


def test_null_is_accepted_for_every_optional_field() -> None:
    optional = [name for name, f in CheckRequest.model_fields.items() if not f.is_required()]
    body = {"goal": "Summarize the open incidents", **dict.fromkeys(optional)}
    parsed = parse_request(body)
    assert parsed.tools is None
    decision = decide(body)
    assert decision.verdict in {"ALLOW", "DEFER", "DENY"}


def test_null_context_keys_are_accepted() -> None:
    ctx = dict.fromkeys(Context.model_fields)
    decision = decide(request(context=ctx))
    assert decision.verdict == "ALLOW"


def test_unknown_fields_are_kept_and_reported() -> None:
    decision = decide(request(client_version="9.9", context={"shard": "eu-1"}))
    assert decision.body["ignored_fields"] == ["client_version"]
    parsed = parse_request(request(context={"shard": "eu-1"}))
    assert parsed.context is not None
    assert parsed.context.model_extra == {"shard": "eu-1"}


def test_environment_alias() -> None:
    decision = decide(request(environment="staging"))
    assert decision.body["environment"] == "staging"
    same = parse_request({"goal": "Deploy it", "environment": "Prod",
                          "context": {"environment": "prod"}})
    assert same.environment == "Prod"


def test_naive_timestamps_are_utc() -> None:
    parsed = parse_request({"goal": "Deploy it", "context": {"approved_at": "2026-03-17T09:00:00"}})
    assert parsed.context is not None
    assert parsed.context.approved_at is not None
    assert parsed.context.approved_at.utcoffset() is not None


def test_approval_status_is_case_insensitive() -> None:
    parsed = parse_request({"goal": "Deploy it", "context": {"approval_status": "Approved"}})
    assert parsed.context is not None
    assert parsed.context.approval_status == "approved"


def test_error_lists_every_field_in_its_summary() -> None:
    with pytest.raises(RequestValidationError) as info:
        parse_request({"goal": "", "tools": [1]})
    summary = info.value.to_dict()["detail"]
    assert "`goal`" in str(summary)
    assert "`tools.0`" in str(summary)


@pytest.mark.parametrize("model", [CheckRequest, CheckResponse])
def test_json_schema_exports(model: type[CheckRequest] | type[CheckResponse]) -> None:
    schema = model.model_json_schema()
    assert schema["type"] == "object"
    assert schema["properties"]


def test_request_schema_declares_limits() -> None:
    props = CheckRequest.model_json_schema()["properties"]
    goal = props["goal"]
    assert goal["maxLength"] == 8000
    assert goal["minLength"] == 1
    tools = props["tools"]["anyOf"][0]
    assert tools["maxItems"] == 200


def test_the_response_model_and_the_response_type_have_the_same_keys() -> None:
    """``CheckResponse`` (OpenAPI, JSON Schema) is the schema of ``ResponseBody`` (what the
    engine builds): one key list, checked, so neither can gain a field alone."""

    assert set(get_type_hints(ResponseBody)) == set(CheckResponse.model_fields)
    assert ResponseBody.__optional_keys__ == {"approval", "execution_token"}


def test_every_surface_hands_out_the_one_response_type() -> None:
    """The engine's answer, the SDK's in-process and fail-closed results are all a
    ``Decision``; the SDK's fail-closed body has the engine's fail-closed shape."""

    engine = Engine(load_policy(None))
    decided = engine.check({"goal": "Read the weekly sales report", "tools": ["reports.read"]})
    assert isinstance(decided, Decision)
    local = LocalEngine().check("Read the weekly sales report", tools=["reports.read"])
    assert isinstance(local, CheckResult)
    assert isinstance(local, Decision)
    assert local.verdict == decided.verdict
    assert local.issue_codes == decided.issue_codes

    unreachable = failed_closed("SERVICE_UNAVAILABLE", "ConnectError: refused")
    assert isinstance(unreachable, Decision)
    assert not unreachable.allowed
    assert set(unreachable.body) == set(ResponseBody.__required_keys__)
    assert (unreachable.verdict, unreachable.decision) == ("DENY", "ERROR")
    assert unreachable.request_id is None
    assert unreachable.policy_version is None
    engine_failed = Engine(None).check({"goal": "Read the weekly sales report"})
    assert engine_failed.issue_codes == ["POLICY_NOT_LOADED"]
    assert set(engine_failed.body) == set(unreachable.body)


def test_the_decision_reads_a_partial_body_without_raising() -> None:
    """A body from another server version may lack fields: the accessors never raise, and
    a body without a verdict reads as DENY/ERROR, never allowed."""

    empty = CheckResult({})
    assert (empty.verdict, empty.decision, empty.allowed) == ("DENY", "ERROR", False)
    assert empty.issues == []
    assert empty.buckets == []
    assert empty.risk_score is None
    odd = CheckResult({"verdict": "ALLOW", "decision": "GO", "issues": "x", "risk_score": True})
    assert odd.allowed
    assert odd.issues == []
    assert odd.risk_score is None
