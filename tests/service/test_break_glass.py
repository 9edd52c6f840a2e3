"""Break-glass approvals: one action through a closed change window or a freeze, never through a
DENY rule; role-restricted, reason required, single use, and listed for post-incident review."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pyotp
from click.testing import CliRunner
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet

from stage0.cli.main import cli
from stage0.policy.loader import default_pack_text
from stage0.store import ledger
from stage0.store.keys import create_key
from tests.service.conftest import Api, running_app
from tests.service.test_approvals import strict_pack
from tests.service.test_console import Console
from tests.service.test_reload import wait_until

SATURDAY = "2026-03-21T10:00:00Z"  # outside business_hours
DEPLOY: dict[str, Any] = {
    "goal": "Deploy release 2026.03.14 to production",
    "success_criteria": ["The release serves traffic"],
    "tools": ["deploy.production"],
    "constraints": ["allowed_change_window: business_hours", "rollback_plan_required: true"],
    "side_effects": ["write"],
    "context": {"environment": "production", "actor_id": "deploy-bot",
                "rollback_plan": "runbook://rb-12", "ticket_id": "OPS-9"},
}
REASON = "SEV1 INC-4411: checkout is down, the hotfix must ship now"


def freeze_pack(tmp_path: Path, *, extra: str = "") -> str:
    text = default_pack_text().replace(
        "change_windows:\n",
        "freezes:\n  - name: year-end\n    start: 2026-03-01T00:00:00Z\n"
        "    end: 2026-04-01T00:00:00Z\n    reason: quarter close\n"
        "    buckets: [production_control_plane]\nchange_windows:\n",
    ) + extra
    path = tmp_path / "freeze.yaml"
    path.write_text(text)
    return str(path)


class People:
    def __init__(self, api: Api) -> None:
        def key(name: str, **kw: Any) -> str:
            return create_key(api.store, tenant="default", name=name, plan="pro",
                              unlimited=True, **kw)[1]
        self.agent = key("agent", scopes=["check"], principal="deploy-bot")
        self.irene = key("irene", scopes=["approve"], principal="irene",
                         roles=["incident-commander"])
        self.carol = key("carol", scopes=["approve"], principal="carol", roles=["support"])
        self.bot_ic = key("bot-ic", scopes=["approve"], principal="deploy-bot",
                          roles=["incident-commander"])


def declare(api: Api, secret: str, request_id: str, reason: str = REASON,
            **body: Any) -> httpx.Response:
    return api.client.post("/v1/break-glass",
                           json={"request_id": request_id, "reason": reason, **body},
                           headers={"x-api-key": secret})


def with_approval(body: dict[str, Any], approval_id: str) -> dict[str, Any]:
    return {**body, "context": {**body["context"], "approval_id": approval_id}}


def test_break_glass_lets_one_action_through_a_closed_window(db_url: str) -> None:
    with running_app(db_url, frozen_time=SATURDAY) as api:
        p = People(api)
        held = api.check(DEPLOY, key=p.agent).json()
        assert held["verdict"] == "DEFER"
        assert "OUTSIDE_CHANGE_WINDOW" in [i["code"] for i in held["issues"]]
        allowed = api.check({**DEPLOY, "goal": "Read the deploy log of release 2026.03.14",
                             "tools": ["logs.read"], "side_effects": [], "constraints": []},
                            key=p.agent).json()
        refusals = [
            (declare(api, p.agent, held["request_id"]), 403, "APPROVER_SCOPE_MISSING"),
            (declare(api, p.carol, held["request_id"]), 403, "BREAK_GLASS_ROLE_NOT_ELIGIBLE"),
            (declare(api, p.irene, held["request_id"], reason="urgent"), 422,
             "BREAK_GLASS_REASON_REQUIRED"),
            (declare(api, p.irene, "4b0c8a56-0000-4000-8000-000000000000"), 404,
             "DECISION_NOT_FOUND"),
            (declare(api, p.irene, allowed["request_id"]), 409, "BREAK_GLASS_NOT_APPLICABLE"),
            (declare(api, p.bot_ic, held["request_id"]), 403, "SELF_APPROVAL"),
        ]
        for response, status, code in refusals:
            assert (response.status_code, response.json().get("code")) == (status, code), \
                response.text
            assert response.json()["detail"]
        missing_reason = api.client.post("/v1/break-glass", json={"request_id": "x"},
                                         headers={"x-api-key": p.irene})
        assert missing_reason.status_code == 422
        assert "reason" in missing_reason.json()["detail"]

        declared = declare(api, p.irene, held["request_id"])
        assert declared.status_code == 200, declared.text
        glass = declared.json()
        assert glass["approval_id"].startswith("brk_")
        assert (glass["kind"], glass["status"], glass["reason"]) == ("break_glass", "approved",
                                                                     REASON)
        assert glass["approvals"] == ["irene"]
        assert glass["action_digest"] == held["action_digest"]
        assert glass["request_id"] == held["request_id"]

        through = api.check(with_approval(DEPLOY, glass["approval_id"]), key=p.agent).json()
        assert through["verdict"] == "ALLOW", through["issues"]
        codes = {i["code"]: i for i in through["issues"]}
        assert "OUTSIDE_CHANGE_WINDOW" not in codes
        assert codes["BREAK_GLASS_USED"]["effect"] == "NONE"
        assert codes["BREAK_GLASS_USED"]["severity"] == "LOW"
        assert glass["approval_id"] in codes["BREAK_GLASS_USED"]["message"]
        assert REASON not in orjson.dumps(through).decode()  # the reason stays in the log
        checks = through["guardrail_checks"]
        assert checks["break_glass"]["lifted"] == ["OUTSIDE_CHANGE_WINDOW"]
        assert checks["change_window"]["windows"][0]["lifted_by"] == glass["approval_id"]
        jwks = KeySet.import_key_set(api.client.get("/.well-known/jwks.json").json())
        claims = jwt.decode(through["execution_token"], jwks, algorithms=["Ed25519"]).claims
        assert (claims["break_glass"], claims["approval_id"]) == (True, glass["approval_id"])

        again = api.check(with_approval(DEPLOY, glass["approval_id"]), key=p.agent).json()
        assert again["verdict"] == "DENY"  # used once: a retry with it is held back
        assert {"APPROVAL_ALREADY_USED", "OUTSIDE_CHANGE_WINDOW"} <= {i["code"] for i in
                                                                       again["issues"]}
        other = {**DEPLOY, "arguments": {"release": "2026.03.15"}}
        assert "APPROVAL_SCOPE_MISMATCH" in [
            i["code"] for i in api.check(with_approval(other, glass["approval_id"]),
                                         key=p.agent).json()["issues"]]

        listed = api.client.get("/v1/approvals", params={"kind": "break_glass"},
                                headers={"x-api-key": p.irene}).json()["items"]
        assert [(a["approval_id"], a["status"]) for a in listed] == [
            (glass["approval_id"], "used")]
        events = [r["kind"] for r in ledger.export(api.store, tenant="default",
                                                               since=None, until=None)]
        assert "approval.break_glass" in events
        assert "break_glass.refused" in events
        assert all(r.ok for r in ledger.verify(api.store, "default"))

    runner = CliRunner()
    report = runner.invoke(cli, ["audit", "break-glass", "--db", db_url, "--format", "json"])
    assert report.exit_code == 0, report.output
    (item,) = orjson.loads(report.stdout)
    assert (item["declared_by"], item["reason"], item["status"]) == ("irene", REASON, "used")
    assert item["declared_for"]["issues"] == [i["code"] for i in held["issues"]]
    assert item["used_by"]["request_id"] == through["request_id"]
    assert item["used_by"]["verdict"] == "ALLOW"
    text = runner.invoke(cli, ["audit", "break-glass", "--db", db_url])
    assert "by irene" in text.stdout
    assert REASON in text.stdout
    assert f"used by {through['request_id']} (ALLOW)" in text.stdout
    none = runner.invoke(cli, ["audit", "break-glass", "--db", db_url,
                               "--since", "2030-01-01T00:00:00Z"])
    assert "no break-glass declarations" in none.stdout


def test_break_glass_lifts_a_freeze_but_never_a_deny_rule(db_url: str, tmp_path: Path) -> None:
    rule = (
        "rules:\n  - id: NO_FRIDAY_PROD_DELETES\n"
        "    when: \"'db.drop_table' in tools\"\n"
        "    message: dropping tables is denied\n"
        "    remediation: never\n"
    )
    with running_app(db_url, frozen_time=SATURDAY, policy=freeze_pack(tmp_path, extra=rule)) \
            as api:
        p = People(api)
        frozen = {**DEPLOY, "constraints": ["rollback_plan_required: true"]}
        held = api.check(frozen, key=p.agent).json()
        assert held["verdict"] == "DENY"
        assert [i["code"] for i in held["issues"] if i["effect"] == "DENY"] == ["CHANGE_FREEZE"]
        glass = declare(api, p.irene, held["request_id"]).json()
        through = api.check(with_approval(frozen, glass["approval_id"]), key=p.agent).json()
        assert through["verdict"] == "ALLOW", through["issues"]
        assert through["guardrail_checks"]["freeze"]["lifted_by"] == glass["approval_id"]
        assert through["guardrail_checks"]["break_glass"]["lifted"] == ["CHANGE_FREEZE"]

        drop = {**frozen, "tools": ["deploy.production", "db.drop_table"]}
        denied = api.check(drop, key=p.agent).json()
        assert {"CHANGE_FREEZE", "NO_FRIDAY_PROD_DELETES"} <= {i["code"] for i in
                                                                denied["issues"]}
        refused = declare(api, p.irene, denied["request_id"])
        assert (refused.status_code, refused.json()["code"]) == (409,
                                                                 "BREAK_GLASS_NOT_APPLICABLE")
        assert "NO_FRIDAY_PROD_DELETES" in refused.json()["detail"]


def test_break_glass_mfa_and_a_pack_that_turns_it_off(db_url: str, tmp_path: Path) -> None:
    text = default_pack_text().replace("  mfa: false            # true: the declarer",
                                       "  mfa: true             # true: the declarer")
    assert "mfa: true             # true: the declarer" in text
    (tmp_path / "mfa.yaml").write_text(text)
    with running_app(db_url, frozen_time=SATURDAY, policy=str(tmp_path / "mfa.yaml")) as api:
        p = People(api)
        ic, ic_secret = create_key(api.store, tenant="default", name="ivan", scopes=["approve"],
                                   principal="ivan", roles=["incident-commander"], plan="pro",
                                   unlimited=True, totp=True)
        held = api.check(DEPLOY, key=p.agent).json()
        no_code = declare(api, ic_secret, held["request_id"])
        assert no_code.json()["code"] == "APPROVER_MFA_REQUIRED"
        assert declare(api, p.irene, held["request_id"]).json()["code"] == \
            "APPROVER_MFA_NOT_ENROLLED"
        assert ic.totp_secret is not None
        code = pyotp.TOTP(ic.totp_secret).now()
        ok = declare(api, ic_secret, held["request_id"], totp=code)
        assert ok.status_code == 200, ok.text
        assert ok.json()["votes"][0]["mfa"] is True

    off = default_pack_text().replace("  enabled: true         #   (never through",
                                      "  enabled: false        #   (never through")
    (tmp_path / "off.yaml").write_text(off)
    with running_app(db_url, frozen_time=SATURDAY, policy=str(tmp_path / "off.yaml")) as api:
        p = People(api)
        held = api.check(DEPLOY, key=p.agent).json()
        refused = declare(api, p.irene, held["request_id"])
        assert (refused.status_code, refused.json()["code"]) == (403, "BREAK_GLASS_DISABLED")


def test_cli_break_glass(db_url: str) -> None:
    with running_app(db_url, frozen_time=SATURDAY) as api:
        p = People(api)
        held = api.check(DEPLOY, key=p.agent).json()
    runner = CliRunner()
    short = runner.invoke(cli, ["approvals", "break-glass", "--db", db_url, "--key", p.irene,
                                "--reason", "now", held["request_id"]])
    assert short.exit_code == 1
    assert "BREAK_GLASS_REASON_REQUIRED" in short.stdout
    declared = runner.invoke(cli, ["approvals", "break-glass", "--db", db_url, "--key", p.irene,
                                   "--reason", REASON, held["request_id"]])
    assert declared.exit_code == 0, declared.output
    assert orjson.loads(declared.stdout)["kind"] == "break_glass"
    listed = runner.invoke(cli, ["approvals", "list", "--db", db_url, "--kind", "break_glass",
                                 "--format", "json"])
    assert [a["kind"] for a in orjson.loads(listed.stdout)] == ["break_glass"]
    report = runner.invoke(cli, ["audit", "break-glass", "--db", db_url, "--format", "json"])
    assert orjson.loads(report.stdout)[0]["status"] == "approved"


def test_break_glass_does_not_stand_in_for_the_approval_rule(db_url: str,
                                                             tmp_path: Path) -> None:
    """Quorum 2, approver MFA, role risk_ops: the declaration lifts the window, and the action
    still needs two risk_ops approvals with TOTP, on the break-glass request itself."""
    with running_app(db_url, frozen_time=SATURDAY, policy=strict_pack(tmp_path)) as api:
        p = People(api)

        def approver(name: str, roles: list[str]) -> tuple[str, str]:
            key, secret = create_key(api.store, tenant="default", name=name, scopes=["approve"],
                                     principal=name, roles=roles, plan="pro", unlimited=True,
                                     totp=True)
            assert key.totp_secret is not None
            return secret, key.totp_secret

        ic, ic_totp = approver("ivy", ["incident-commander"])
        ann, ann_totp = approver("ann", ["risk_ops"])
        ben, ben_totp = approver("ben", ["risk_ops"])
        held = api.check(DEPLOY, key=p.agent).json()
        assert held["approval"]["required_approvals"] == 2
        assert declare(api, ic, held["request_id"]).json()["code"] == "APPROVER_MFA_REQUIRED"
        glass = declare(api, ic, held["request_id"], totp=pyotp.TOTP(ic_totp).now()).json()
        assert (glass["status"], glass["required_approvals"], glass["requires_mfa"]) == (
            "pending", 2, True)
        assert glass["approvals"] == []  # the declarer is not a risk_ops approver
        assert glass["eligible_roles"] == ["risk_ops"]
        pending = api.check(with_approval(DEPLOY, glass["approval_id"]), key=p.agent).json()
        assert pending["verdict"] == "DEFER"
        console = Console(TestClient(api.client.app))
        assert console.sign_in(ann).status_code == 303
        inbox = console.client.get("/console/inbox").text
        assert "break-glass" in inbox
        assert "lifts OUTSIDE_CHANGE_WINDOW" in inbox
        for secret, code in ((ann, ann_totp), (ben, ben_totp)):
            voted = api.client.post(f"/v1/approvals/{glass['approval_id']}/approve",
                                    json={"reason": "ok", "totp": pyotp.TOTP(code).now()},
                                    headers={"x-api-key": secret})
            assert voted.status_code == 200, voted.text
        assert voted.json()["status"] == "approved"
        through = api.check(with_approval(DEPLOY, glass["approval_id"]), key=p.agent).json()
        assert through["verdict"] == "ALLOW", through["issues"]
        assert through["guardrail_checks"]["break_glass"]["lifted"] == ["OUTSIDE_CHANGE_WINDOW"]


def test_one_declaration_per_decision_and_only_what_it_was_declared_for(db_url: str,
                                                                         tmp_path: Path) -> None:
    pack = tmp_path / "policy"
    pack.mkdir()
    (pack / "pack.yaml").write_text(default_pack_text())
    with running_app(db_url, frozen_time=SATURDAY, policy=str(pack)) as api:
        p = People(api)
        held = api.check(DEPLOY, key=p.agent).json()
        glass = declare(api, p.irene, held["request_id"]).json()
        assert glass["lifts"] == ["OUTSIDE_CHANGE_WINDOW"]
        again = declare(api, p.irene, held["request_id"])
        assert (again.status_code, again.json()["code"]) == (409, "BREAK_GLASS_ALREADY_DECLARED")
        assert glass["approval_id"] in again.json()["detail"]

        # an emergency freeze arrives after the declaration: the glass does not lift it
        (pack / "pack.yaml").write_text(default_pack_text().replace(
            "change_windows:\n",
            "freezes:\n  - name: incident\n    start: 2026-03-01T00:00:00Z\n"
            "    end: 2026-04-01T00:00:00Z\nchange_windows:\n"))
        assert wait_until(lambda: api.client.get("/readyz").json()["policy_sha256"]
                          != held["policy_sha256"])
        frozen = api.check(with_approval(DEPLOY, glass["approval_id"]), key=p.agent).json()
        assert frozen["verdict"] == "DENY"
        assert "CHANGE_FREEZE" in [i["code"] for i in frozen["issues"]]
        assert frozen["guardrail_checks"]["break_glass"]["lifted"] == ["OUTSIDE_CHANGE_WINDOW"]

        # a pack that turns break-glass off stops honouring declarations made before
        (pack / "pack.yaml").write_text(default_pack_text().replace(
            "  enabled: true         #   (never through",
            "  enabled: false        #   (never through"))
        assert wait_until(lambda: api.client.get("/readyz").json()["policy_sha256"]
                          != frozen["policy_sha256"])
        off = api.check(with_approval(DEPLOY, glass["approval_id"]), key=p.agent).json()
        assert off["verdict"] == "DEFER"
        codes = [i["code"] for i in off["issues"]]
        assert "OUTSIDE_CHANGE_WINDOW" in codes
        assert "BREAK_GLASS_USED" not in codes
        assert off["guardrail_checks"]["approval"]["break_glass"]["honoured"] is False
