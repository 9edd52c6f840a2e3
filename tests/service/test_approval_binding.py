"""What a server-side approval is bound to besides the action digest (#17 item 4, #15): its
bound fields (goal, record count, amounts, tenants) and its requester (the key, by default).
On SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stage0.policy.loader import default_pack_text
from stage0.store.keys import create_key
from tests.service.conftest import Api, running_app

T0 = "2026-03-17T10:00:00Z"
EXPORT = {
    "goal": "Export the March invoices of customer 1042 for the auditors",
    "success_criteria": ["The auditors have the file"],
    "tools": ["crm.bulk_delete"],
    "side_effects": ["data deletion"],
    "constraints": ["approval required"],
    "arguments": {"customer": "1042"},
    "context": {"environment": "staging", "actor_id": "agent-7", "record_count": 10},
}


def _with(body: dict[str, Any], goal: str | None = None, **context: Any) -> dict[str, Any]:
    return {**body, "goal": goal or body["goal"], "context": {**body["context"], **context}}


def _codes(answer: dict[str, Any]) -> list[str]:
    return [i["code"] for i in answer["issues"]]


def _keys(api: Api) -> dict[str, str]:
    def key(name: str, principal: str, scopes: list[str]) -> str:
        return create_key(api.store, tenant="default", name=name, scopes=scopes, plan="pro",
                          unlimited=True, principal=principal)[1]
    return {"agent": key("agent", "agent-7", ["check"]),
            "twin": key("agent-twin", "agent-7", ["check"]),
            "other": key("other-agent", "agent-9", ["check"]),
            "alice": key("alice", "alice", ["approve"])}


def _granted(api: Api, keys: dict[str, str], body: dict[str, Any], key: str = "agent") -> str:
    first = api.check(body, key=keys[key]).json()
    assert first["verdict"] == "DEFER", first
    aid = str(first["approval"]["approval_id"])
    voted = api.client.post(f"/v1/approvals/{aid}/approve", json={"reason": "ok"},
                            headers={"x-api-key": keys["alice"]})
    assert voted.status_code == 200, voted.text
    assert voted.json()["status"] == "approved"
    return aid


@pytest.mark.parametrize(("change", "field", "was", "now"), [
    ({"record_count": 100_000}, "context.record_count", "10", "100000"),
    ({"amount": 99_000}, "context.amount", "absent", "99000"),
    ({"currency": "EUR"}, "context.currency", "absent", "`EUR`"),
], ids=["record count", "amount", "currency"])
def test_an_approval_does_not_cover_changed_bound_fields(
        db_url: str, change: dict[str, Any], field: str, was: str, now: str) -> None:
    with running_app(db_url, frozen_time=T0) as api:
        keys = _keys(api)
        aid = _granted(api, keys, EXPORT)
        changed = api.check(_with(EXPORT, approval_id=aid, **change), key=keys["agent"]).json()
        assert changed["verdict"] == "DEFER"
        assert _codes(changed) == ["APPROVAL_SCOPE_MISMATCH"]
        message = changed["issues"][0]["message"]
        assert f"`{field}` was {was}, is {now}" in message
        # the changed action gets a request of its own; the approval is not used up
        assert changed["approval"]["approval_id"] != aid
        assert changed["approval"]["bound_fields"][field] is not None
        same = api.check(_with(EXPORT, approval_id=aid), key=keys["agent"]).json()
        assert same["verdict"] == "ALLOW", same
        assert same["guardrail_checks"]["approval"]["verified"] is True


def test_a_changed_goal_needs_a_new_approval(db_url: str) -> None:
    with running_app(db_url, frozen_time=T0) as api:
        keys = _keys(api)
        aid = _granted(api, keys, EXPORT)
        other_goal = _with(EXPORT, "Delete every invoice of customer 1042", approval_id=aid)
        answer = api.check(other_goal, key=keys["agent"]).json()
        assert answer["verdict"] == "DEFER"
        assert _codes(answer) == ["APPROVAL_SCOPE_MISMATCH"]
        assert "`goal` was `Export the March invoices" in answer["issues"][0]["message"]
        # the approvers see what they approve: the bound values are on the request
        approval = api.client.get(f"/v1/approvals/{aid}",
                                  headers={"x-api-key": keys["alice"]}).json()
        assert approval["bound_fields"] == {"context.record_count": 10, "goal": EXPORT["goal"]}
        assert approval["bound_to"] == "key"


def test_an_approval_belongs_to_the_key_that_asked(db_url: str) -> None:
    with running_app(db_url, frozen_time=T0) as api:
        keys = _keys(api)
        aid = _granted(api, keys, EXPORT)
        for name in ("twin", "other"):  # same principal or not: another key of the tenant
            answer = api.check(_with(EXPORT, approval_id=aid), key=keys[name]).json()
            assert answer["verdict"] == "DEFER", name
            assert _codes(answer) == ["APPROVAL_REQUESTER_MISMATCH"]
            assert "bound to its requester (`approvals.bound_to: key`)" in (
                answer["issues"][0]["message"])
            own = answer["approval"]
            assert own["approval_id"] != aid
            assert own["requested_by"]["principal"] == ("agent-7" if name == "twin"
                                                        else "agent-9")
        # without an approval id, each key gets (and keeps) its own request
        twin = api.check(EXPORT, key=keys["twin"]).json()["approval"]["approval_id"]
        assert twin == api.check(EXPORT, key=keys["twin"]).json()["approval"]["approval_id"]
        assert twin != aid
        mine = api.check(_with(EXPORT, approval_id=aid), key=keys["agent"]).json()
        assert mine["verdict"] == "ALLOW"


@pytest.mark.parametrize(("bound_to", "twin", "other"), [
    ("principal", "ALLOW", "DEFER"),
    ("tenant", "ALLOW", "ALLOW"),
])
def test_the_pack_may_widen_the_binding(db_url: str, tmp_path: Path, bound_to: str, twin: str,
                                        other: str) -> None:
    text = default_pack_text().replace("  execute_within: 15m",
                                       f"  execute_within: 15m\n  bound_to: {bound_to}", 1)
    assert f"bound_to: {bound_to}" in text
    pack = tmp_path / "wide.yaml"
    pack.write_text(text)
    with running_app(db_url, frozen_time=T0, policy=str(pack)) as api:
        keys = _keys(api)
        for name, verdict in (("twin", twin), ("other", other)):
            aid = _granted(api, keys, EXPORT)
            answer = api.check(_with(EXPORT, approval_id=aid), key=keys[name]).json()
            assert answer["verdict"] == verdict, (name, answer["issues"])
            if verdict == "DEFER":
                assert _codes(answer) == ["APPROVAL_REQUESTER_MISMATCH"]


def test_an_unanswered_request_times_out_and_is_recorded_as_expired(db_url: str) -> None:
    with running_app(db_url, frozen_time=T0) as api:
        keys = _keys(api)
        aid = api.check(EXPORT, key=keys["agent"]).json()["approval"]["approval_id"]
    with running_app(db_url, frozen_time="2026-03-18T10:00:01Z") as later:
        answer = later.check(_with(EXPORT, approval_id=aid), key=keys["agent"]).json()
        assert answer["verdict"] == "DEFER"
        assert _codes(answer) == ["APPROVAL_TIMED_OUT"]
        assert answer["issues"][0]["message"] == (
            f"Approval `{aid}` expired at 2026-03-18T10:00:00Z before it was decided "
            "(0 of 1 approvals)")
        assert answer["approval"]["approval_id"] != aid  # a fresh request for the action
        old = later.client.get(f"/v1/approvals/{aid}", headers={"x-api-key": keys["alice"]})
        assert old.json()["status"] == "expired"  # not a rejection
        assert old.json()["rejections"] == []


# -- where to act: the approval's page (#14 item 6) -------------------------------------------


def test_a_defer_links_to_its_approval_page(db_url: str) -> None:
    with running_app(db_url, frozen_time=T0) as api:
        keys = _keys(api)
        approval = api.check(EXPORT, key=keys["agent"]).json()["approval"]
        aid = approval["approval_id"]
        # no STAGE0_PUBLIC_URL: a path (never built from the request's Host header)
        assert approval["approval_url"] == f"/console/approvals/{aid}"
        # the SDK makes it absolute against the address it reached the server at
        from stage0.sdk import Client  # noqa: PLC0415
        client = Client(base_url="http://stage0.internal:8000", api_key=keys["agent"],
                        http_client=api.client)
        result = client.check(EXPORT)
        assert result.approval_url == f"http://stage0.internal:8000/console/approvals/{aid}"

        # signed out, the link leads to the sign-in, which comes back to the page
        from tests.service.test_console import _field  # noqa: PLC0415
        browser = TestClient(api.client.app)
        first = browser.get(f"/console/approvals/{aid}", follow_redirects=False)
        assert first.headers["location"] == f"/console/login?next=/approvals/{aid}"
        form = browser.get(first.headers["location"]).text
        assert _field(form, "next") == f"/approvals/{aid}"
        signed = browser.post("/console/login", follow_redirects=False, data={
            "api_key": keys["alice"], "csrf_token": _field(form, "csrf_token"),
            "next": _field(form, "next")})
        assert signed.headers["location"] == f"/console/approvals/{aid}"
        page = browser.get(f"/console/approvals/{aid}")
        assert page.status_code == 200
        assert f"Approval request <code>{aid}</code>" in page.text
        assert "<code>context.record_count</code> = 10" in page.text
        assert "usable by the requesting key only" in page.text
        assert 'action="/console/approvals/' in page.text  # approvers can decide here
        missing = browser.get("/console/approvals/apr_nope")
        assert missing.status_code == 404

        # a sign-in never continues anywhere but a console page
        for evil in ("https://evil.example/", "//evil.example/x", "/approvals/../../x"):
            fresh = TestClient(api.client.app)
            form = fresh.get("/console/login").text
            away = fresh.post("/console/login", follow_redirects=False, data={
                "api_key": keys["alice"], "csrf_token": _field(form, "csrf_token"),
                "next": evil})
            assert away.headers["location"] == "/console/inbox", evil


def test_with_a_public_url_the_link_is_absolute_everywhere(db_url: str,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from stage0.app import Settings, create_app  # noqa: PLC0415
    from stage0.store import Store  # noqa: PLC0415

    store = Store(db_url)
    store.migrate()
    agent = create_key(store, tenant="default", name="agent", scopes=["check"], plan="pro",
                       unlimited=True, principal="agent-7")[1]
    app = create_app(Settings(db=db_url, frozen_time=T0, public_url="https://stage0.example.com"))
    with TestClient(app) as client:
        body = client.post("/check", json=EXPORT, headers={"x-api-key": agent}).json()
        aid = body["approval"]["approval_id"]
        url = f"https://stage0.example.com/console/approvals/{aid}"
        assert body["approval"]["approval_url"] == url
        shown = client.get(f"/v1/approvals/{aid}", headers={"x-api-key": agent}).json()
        assert shown["approval_url"] == url
    store.dispose()


@pytest.mark.parametrize("value", ["stage0.example.com", "ftp://x", "https://x/?a=1"])
def test_a_bad_public_url_is_refused_at_start(value: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from stage0.server.state import Settings  # noqa: PLC0415

    monkeypatch.setenv("STAGE0_PUBLIC_URL", value)
    with pytest.raises(ValueError, match="STAGE0_PUBLIC_URL must be an absolute http"):
        Settings.from_env()


# -- the binding is the same whichever rule or pack version decides -------------------------


def _pack(tmp_path: Path, name: str, replace: dict[str, str]) -> str:
    text = default_pack_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_packs_bound_fields_hold_in_a_bucket_with_its_own_rule(db_url: str,
                                                                    tmp_path: Path) -> None:
    pack = _pack(tmp_path, "binds.yaml", {
        "  execute_within: 15m   # once granted, /check must use it within this window\n":
        "  execute_within: 15m\n  binds: [context.invoice_id]\n",
        "    require:\n      approval: true\n  production_control_plane:":
        "    require:\n      approval: true\n      approvals: {quorum: 1}\n"
        "  production_control_plane:"})
    with running_app(db_url, frozen_time=T0, policy=pack) as api:
        keys = _keys(api)
        aid = _granted(api, keys, _with(EXPORT, invoice_id="inv-1"))
        other = api.check(_with(EXPORT, approval_id=aid, invoice_id="inv-999"),
                          key=keys["agent"]).json()
        assert other["verdict"] == "DEFER"
        assert _codes(other) == ["APPROVAL_SCOPE_MISMATCH"]
        assert "`context.invoice_id` was `inv-1`, is `inv-999`" in other["issues"][0]["message"]
        same = api.check(_with(EXPORT, approval_id=aid, invoice_id="inv-1"), key=keys["agent"])
        assert same.json()["verdict"] == "ALLOW"


def test_a_field_named_like_a_model_method_is_bound_by_its_value(db_url: str,
                                                                 tmp_path: Path) -> None:
    pack = _pack(tmp_path, "schema.yaml", {
        "  execute_within: 15m   # once granted, /check must use it within this window\n":
        "  execute_within: 15m\n  binds: [context.schema, context.copy]\n"})
    with running_app(db_url, frozen_time=T0, policy=pack) as api:
        keys = _keys(api)
        aid = _granted(api, keys, _with(EXPORT, schema="billing"))
        answer = api.check(_with(EXPORT, approval_id=aid, schema="ledger"),
                           key=keys["agent"]).json()
        assert _codes(answer) == ["APPROVAL_SCOPE_MISMATCH"]
        assert "`context.schema` was `billing`, is `ledger`" in answer["issues"][0]["message"]


@pytest.mark.parametrize("field", ["context.approval_id", "context.current_iteration",
                                   "context.cost_usd", "context.approved_at"])
def test_fields_that_change_on_every_retry_cannot_be_bound(field: str) -> None:
    from stage0.policy import PolicyError, compile_text  # noqa: PLC0415

    text = default_pack_text().replace(
        "  execute_within: 15m   # once granted, /check must use it within this window\n",
        f"  execute_within: 15m\n  binds: [{field}]\n", 1)
    with pytest.raises(PolicyError, match="changes from one check to the next"):
        compile_text(text)


def test_a_pinned_request_and_its_ceiling_bind_alike() -> None:
    """A new pack version binds one more field while callers still pin the old one: the held
    version and the active one (the pin's ceiling) must compute the same binding, or the
    approval could never be used."""
    from stage0.engine import ApprovalEvidence, Engine  # noqa: PLC0415
    from stage0.policy import compile_text  # noqa: PLC0415
    from stage0.testing import FixedClock, StaticApprovals  # noqa: PLC0415

    held = compile_text(default_pack_text())
    active = compile_text(default_pack_text().replace("version: 1.0.0", "version: 2.0.0", 1)
                          .replace("  execute_within: 15m   # once granted, /check must use it "
                                   "within this window\n",
                                   "  execute_within: 15m\n  binds: [context.invoice_id]\n", 1))
    approvals = StaticApprovals()
    engine = Engine(active, held=(held,), approvals=approvals, clock=FixedClock(T0))
    pinned = _with({**EXPORT, "policy_pack_version": held.policy_version}, invoice_id="inv-1")
    first = engine.check(pinned)
    assert first.verdict == "DEFER"
    binding = first.body["guardrail_checks"]["approval"]["binding_digest"]
    approvals.add(ApprovalEvidence("apr_1", "approved", first.action_digest or "",
                                   approvers=("alice",), binding_digest=binding))
    retry = engine.check(_with(pinned, approval_id="apr_1"))
    assert retry.verdict == "ALLOW", retry.issue_codes
    changed = engine.check(_with(pinned, approval_id="apr_1", invoice_id="inv-2"))
    assert "APPROVAL_SCOPE_MISMATCH" in changed.issue_codes


def test_an_approval_granted_late_holds_for_its_execute_by_window() -> None:
    """Granted just before the request would have expired: the execute-by window decides."""
    from stage0.contract.request import parse_instant  # noqa: PLC0415
    from stage0.engine import ApprovalEvidence  # noqa: PLC0415
    from stage0.testing import StaticApprovals, make_engine  # noqa: PLC0415

    body = _with(EXPORT, approval_id="apr_late")
    probe = make_engine(T0).check(body)
    approvals = StaticApprovals()
    approvals.add(ApprovalEvidence(
        "apr_late", "approved", probe.action_digest or "",
        expires_at=parse_instant("2026-03-17T09:59:50Z"),
        execute_by=parse_instant("2026-03-17T10:14:50Z"), approvers=("alice",),
        binding_digest=probe.body["guardrail_checks"]["approval"]["binding_digest"]))
    assert make_engine(T0, approvals=approvals).check(body).verdict == "ALLOW"
    late = make_engine("2026-03-17T10:15:00Z", approvals=approvals).check(body)
    assert late.issue_codes == ["APPROVAL_EXPIRED"]


@pytest.mark.parametrize("value", ["15m", "inf", "-1", "nan"])
def test_a_bad_expiry_warning_stops_the_start(value: str, db_url: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from stage0.server.state import Settings, start  # noqa: PLC0415

    monkeypatch.setenv("STAGE0_APPROVAL_EXPIRY_WARNING_S", value)
    with pytest.raises(ValueError, match="STAGE0_APPROVAL_EXPIRY_WARNING_S must be a number"):
        start(Settings(db=db_url, frozen_time=T0))  # refused before the store is opened


def test_bound_values_of_other_types_bind_apart() -> None:
    """1, 1.0 and true are one key to Python but three values to JSON (and to the digest)."""
    from stage0.testing import make_engine  # noqa: PLC0415

    engine = make_engine(T0)
    digests = {engine.check(_with(EXPORT, amount=v)).body["guardrail_checks"]["approval"][
        "binding_digest"] for v in (1, 1.5, True, "1")}
    again = engine.check(_with(EXPORT, amount=1)).body["guardrail_checks"]["approval"]
    assert len(digests) == 4
    assert again["binding_digest"] in digests
    one_float = engine.check(_with(EXPORT, amount=1.0)).body["guardrail_checks"]["approval"]
    one_int = engine.check(_with(EXPORT, amount=1)).body["guardrail_checks"]["approval"]
    from stage0.engine.digest import canonical_json  # noqa: PLC0415
    # RFC 8785 writes 1.0 as 1: the same JSON, the same digest; true stays apart
    assert canonical_json(1.0) == canonical_json(1)
    assert one_float["binding_digest"] == one_int["binding_digest"]
