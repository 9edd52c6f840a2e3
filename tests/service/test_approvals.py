"""Approvals and execution tokens end to end (CONTRACT section 6), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyotp
import pytest
from click.testing import CliRunner
from joserfc import jwt
from joserfc.jwk import KeySet

from stage0.cli.main import cli
from stage0.policy.loader import default_pack_text
from stage0.store import Store, ledger
from stage0.store.keys import ApiKey, create_key
from tests.service.conftest import Api, running_app, start_server

T0 = "2026-03-17T10:00:00Z"
PAYOUT = {
    "goal": "Release the manual payout for invoice 2231",
    "success_criteria": ["The vendor is paid"],
    "tools": ["payments.create_payout"],
    "side_effects": ["money movement"],
    "constraints": ["approval required", "max_records: 1"],
    "arguments": {"vendor": "acme-supplies", "amount": 1250, "currency": "EUR"},
    "context": {"environment": "production", "actor_id": "agent-7"},
}


def strict_pack(tmp_path: Path) -> str:
    """The default pack with quorum 2, approver MFA and eligible role risk_ops."""
    text = default_pack_text().replace(
        "  quorum: 1             # approvals needed; one rejection ends the request\n"
        "  approver_roles: []    # empty: any principal whose key has the `approve` scope\n"
        "  approver_mfa: false   # true: approvers must send a valid TOTP code\n",
        "  quorum: 2\n  approver_roles: [risk_ops]\n  approver_mfa: true\n",
    )
    assert "quorum: 2" in text
    path = tmp_path / "strict.yaml"
    path.write_text(text)
    return str(path)


class People:
    def __init__(self, store: Store) -> None:
        def key(name: str, **kw: Any) -> tuple[ApiKey, str]:
            return create_key(store, tenant="default", name=name, plan="pro", unlimited=True,
                              **kw)
        self.agent, self.agent_key = key("agent", scopes=["check"], principal="agent-7")
        self.alice, self.alice_key = key("alice", scopes=["approve"], principal="alice",
                                         roles=["risk_ops"], totp=True)
        self.bob, self.bob_key = key("bob", scopes=["approve", "check"], principal="bob",
                                     roles=["risk_ops"], totp=True)
        self.carol, self.carol_key = key("carol", scopes=["approve"], principal="carol",
                                         roles=["support"], totp=True)
        self.selfie, self.selfie_key = key("agent-approver", scopes=["approve"],
                                           principal="agent-7", roles=["risk_ops"], totp=True)
        self.other, self.other_key = create_key(store, tenant="globex", name="other",
                                                scopes=["check"], plan="pro", unlimited=True)


def totp(key: ApiKey) -> str:
    assert key.totp_secret is not None
    return pyotp.TOTP(key.totp_secret).now()


def vote(api: Api, secret: str, approval_id: str, op: str = "approve",
         **body: Any) -> httpx.Response:
    return api.client.post(f"/v1/approvals/{approval_id}/{op}", json={"reason": "ok", **body},
                           headers={"x-api-key": secret})


def consume(api: Api, secret: str, token: str, digest: str) -> httpx.Response:
    return api.client.post("/v1/tokens/consume", json={"token": token, "action_digest": digest},
                           headers={"x-api-key": secret})


def test_the_whole_path(db_url: str, tmp_path: Path) -> None:
    with running_app(db_url, frozen_time=T0, policy=strict_pack(tmp_path)) as api:
        p = People(api.store)
        first = api.check(PAYOUT, key=p.agent_key).json()
        assert first["verdict"] == "DEFER"
        approval = first["approval"]
        assert approval["status"] == "pending"
        assert (approval["required_approvals"], approval["requires_mfa"]) == (2, True)
        assert approval["eligible_roles"] == ["risk_ops"]
        assert approval["requested_by"] == {"principal": "agent-7", "key_id": p.agent.id,
                                            "actor_id": "agent-7"}
        assert approval["action"]["arguments"]["amount"] == 1250
        assert approval["action_digest"] == first["action_digest"]
        aid = approval["approval_id"]
        again = api.check(PAYOUT, key=p.agent_key).json()
        assert again["approval"]["approval_id"] == aid  # reused for the same action

        refusals = [
            (vote(api, p.agent_key, aid), 403, "APPROVER_SCOPE_MISSING"),
            (vote(api, p.selfie_key, aid, totp=totp(p.selfie)), 403, "SELF_APPROVAL"),
            (vote(api, p.carol_key, aid, totp=totp(p.carol)), 403, "APPROVER_ROLE_NOT_ELIGIBLE"),
            (vote(api, p.alice_key, aid), 401, "APPROVER_MFA_REQUIRED"),
            (vote(api, p.alice_key, aid, totp="000000" if totp(p.alice) != "000000"
                  else "111111"), 403, "APPROVER_MFA_INVALID"),
            (vote(api, p.alice_key, "apr_missing", totp=totp(p.alice)), 404,
             "APPROVAL_NOT_FOUND"),
        ]
        for response, status, code in refusals:
            assert (response.status_code, response.json().get("code")) == (status, code), \
                response.text
            assert {"detail", "request_id", "code"} <= set(response.json())

        granted = vote(api, p.alice_key, aid, totp=totp(p.alice))
        assert granted.status_code == 200, granted.text
        assert (granted.json()["status"], granted.json()["approvals"]) == ("pending", ["alice"])
        twice = vote(api, p.alice_key, aid, totp=totp(p.alice))
        assert twice.json()["code"] == "APPROVAL_ALREADY_VOTED"

        with_id = {**PAYOUT, "context": {**PAYOUT["context"], "approval_id": aid}}
        pending = api.check(with_id, key=p.agent_key).json()
        assert pending["verdict"] == "DEFER"
        assert "APPROVAL_REQUIRED_PENDING" in [i["code"] for i in pending["issues"]]

        done = vote(api, p.bob_key, aid, totp=totp(p.bob))
        assert done.json()["status"] == "approved"
        assert done.json()["execute_by"] == "2026-03-17T10:15:00Z"

        allowed = api.check(with_id, key=p.agent_key).json()
        assert allowed["verdict"] == "ALLOW", allowed["reason"]
        assert allowed["guardrail_checks"]["approval"]["verified"] is True
        assert allowed["guardrail_checks"]["approval"]["approvers"] == ["alice", "bob"]
        token = allowed["execution_token"]

        # the runtime verifies the token with the published keys, as any JOSE library would
        keys = KeySet.import_key_set(api.client.get("/.well-known/jwks.json").json())
        claims = jwt.decode(token, keys, algorithms=["Ed25519"]).claims
        assert claims["sub"] == "default"
        assert claims["jti"] == allowed["request_id"]
        assert claims["action_digest"] == allowed["action_digest"]
        assert claims["approval_id"] == aid
        assert claims["policy_version"] == "stage0-policy-pack@1.0.0"
        assert claims["buckets"] == ["money_movement"]
        assert 0 < claims["exp"] - claims["iat"] <= 300

        digest = allowed["action_digest"]
        wrong = consume(api, p.agent_key, token, "0" * 64)
        assert (wrong.status_code, wrong.json()["code"]) == (401, "TOKEN_DIGEST_MISMATCH")
        other = consume(api, p.other_key, token, digest)
        assert (other.status_code, other.json()["code"]) == (401, "TOKEN_WRONG_TENANT")
        forged = consume(api, p.agent_key, token[:-6] + "AAAAAA", digest)
        assert (forged.status_code, forged.json()["code"]) == (401, "TOKEN_INVALID")
        ok = consume(api, p.agent_key, token, digest)
        assert ok.status_code == 200, ok.text
        assert ok.json()["approval_id"] == aid
        replay = consume(api, p.agent_key, token, digest)
        assert (replay.status_code, replay.json()["code"]) == (409, "TOKEN_ALREADY_CONSUMED")

        # an approval allows its action once: a retry with it is denied, and opens nothing
        reuse = api.check(with_id, key=p.agent_key).json()
        assert (reuse["verdict"], reuse["decision"]) == ("DENY", "NO_GO")
        codes = [i["code"] for i in reuse["issues"]]
        assert "APPROVAL_ALREADY_USED" in codes
        assert "APPROVAL_EXPIRED" not in codes
        assert allowed["request_id"] in reuse["reason"]
        assert "approval" not in reuse
        assert reuse["decision_trace_summary"].startswith("DENY/NO_GO under ")
        assert "deny: APPROVAL_ALREADY_USED" in reuse["decision_trace_summary"]
        assert [a["approval_id"] for a in api.client.get(
            "/v1/approvals", headers={"x-api-key": p.alice_key}).json()["items"]] == [aid]
        # a new check without the id is a new request: it opens a new approval
        again = api.check(PAYOUT, key=p.agent_key).json()
        assert again["verdict"] == "DEFER"
        assert again["approval"]["approval_id"] != aid
        used = api.client.get(f"/v1/approvals/{aid}", headers={"x-api-key": p.alice_key}).json()
        assert (used["status"], used["used_by_request"]) == ("used", allowed["request_id"])

        changed = {**with_id, "arguments": {**PAYOUT["arguments"], "amount": 9999}}
        mismatch = api.check(changed, key=p.agent_key).json()
        assert mismatch["verdict"] == "DEFER"
        assert "APPROVAL_SCOPE_MISMATCH" in [i["code"] for i in mismatch["issues"]]
        assert mismatch["approval"]["approval_id"] != aid  # a new request for the new action

        kinds = [r["kind"] for r in ledger.export(api.store, tenant="default", since=None,
                                                  until=None)]
        for kind in ("approval.created", "approval.vote", "approval.approved", "approval.used",
                     "approval.refused", "token.consumed", "token.refused"):
            assert kind in kinds, kinds
        assert all(r.ok for r in ledger.verify(api.store))


def test_rejection_ends_the_request(db_url: str, tmp_path: Path) -> None:
    with running_app(db_url, frozen_time=T0, policy=strict_pack(tmp_path)) as api:
        p = People(api.store)
        aid = api.check(PAYOUT, key=p.agent_key).json()["approval"]["approval_id"]
        assert vote(api, p.alice_key, aid, totp=totp(p.alice)).status_code == 200
        rejected = vote(api, p.bob_key, aid, "reject", totp=totp(p.bob))
        assert rejected.json()["status"] == "rejected"
        assert rejected.json()["rejections"] == ["bob"]
        late = vote(api, p.alice_key, aid, totp=totp(p.alice))
        assert (late.status_code, late.json()["code"]) == (409, "APPROVAL_ALREADY_DECIDED")
        with_id = {**PAYOUT, "context": {**PAYOUT["context"], "approval_id": aid}}
        body = api.check(with_id, key=p.agent_key).json()
        assert body["verdict"] == "DENY"
        assert "APPROVAL_REJECTED" in [i["code"] for i in body["issues"]]
        listed = api.client.get("/v1/approvals?status=rejected",
                                headers={"x-api-key": p.alice_key}).json()["items"]
        assert [a["approval_id"] for a in listed] == [aid]


def test_expiry_and_the_execute_by_window(db_url: str, tmp_path: Path) -> None:
    pack = strict_pack(tmp_path)
    with running_app(db_url, frozen_time=T0, policy=pack) as api:
        p = People(api.store)
        stale = api.check(PAYOUT, key=p.agent_key).json()["approval"]["approval_id"]
        other = {**PAYOUT, "arguments": {"amount": 5}}
        granted = api.check(other, key=p.agent_key).json()["approval"]["approval_id"]
        for who, key in ((p.alice_key, p.alice), (p.bob_key, p.bob)):
            assert vote(api, who, granted, totp=totp(key)).status_code == 200
        secrets = (p.agent_key, p.alice_key, p.alice)
    with running_app(db_url, frozen_time="2026-03-17T10:16:00Z", policy=pack) as api:
        agent_key, alice_key, alice = secrets
        late_use = api.check({**other, "context": {**PAYOUT["context"], "approval_id": granted}},
                             key=agent_key).json()
        assert late_use["verdict"] == "DEFER"
        assert "APPROVAL_EXPIRED" in [i["code"] for i in late_use["issues"]]
    with running_app(db_url, frozen_time="2026-03-18T10:00:01Z", policy=pack) as api:
        expired = vote(api, alice_key, stale, totp=totp(alice))
        assert (expired.status_code, expired.json()["code"]) == (409, "APPROVAL_EXPIRED")
        shown = api.client.get(f"/v1/approvals/{stale}", headers={"x-api-key": alice_key}).json()
        assert shown["status"] == "expired"


def test_default_pack_one_approver_no_mfa(api: Api) -> None:
    agent = api.new_key(scopes=["check"], principal="bot")
    approver = api.new_key(scopes=["approve"], principal="dana")
    first = api.check(PAYOUT, key=agent).json()
    assert first["approval"]["required_approvals"] == 1
    assert first["approval"]["requires_mfa"] is False
    aid = first["approval"]["approval_id"]
    assert vote(api, approver, aid).json()["status"] == "approved"
    allowed = api.check({**PAYOUT, "context": {**PAYOUT["context"], "approval_id": aid}},
                        key=agent).json()
    assert allowed["verdict"] == "ALLOW"
    assert allowed["execution_token"].count(".") == 2


def test_no_token_for_an_allow_outside_the_buckets(api: Api) -> None:
    body = api.check({"goal": "Summarize the open tickets for the team",
                      "success_criteria": ["posted"], "tools": ["ticket_search"]}).json()
    assert body["verdict"] == "ALLOW"
    assert body.get("execution_token") is None


def test_cli_approvals(db_url: str, tmp_path: Path) -> None:
    with running_app(db_url, frozen_time=None) as api:
        agent = api.new_key(scopes=["check"], principal="bot")
        _, approver = create_key(api.store, tenant="default", name="erin", scopes=["approve"],
                                 principal="erin", plan="pro", unlimited=True)
        aid = api.check(PAYOUT, key=agent).json()["approval"]["approval_id"]
    runner = CliRunner()
    listed = runner.invoke(cli, ["approvals", "list", "--db", db_url, "--key", approver,
                                 "--status", "pending", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    assert [a["approval_id"] for a in orjson.loads(listed.stdout)] == [aid]
    refused = runner.invoke(cli, ["approvals", "approve", "--db", db_url, "--key", agent, aid])
    assert refused.exit_code == 1
    assert "APPROVER_SCOPE_MISSING" in refused.stdout
    approved = runner.invoke(cli, ["approvals", "approve", "--db", db_url, "--key", approver,
                                   "--reason", "checked the invoice", aid])
    assert approved.exit_code == 0, approved.output
    assert orjson.loads(approved.stdout)["status"] == "approved"
    shown = runner.invoke(cli, ["approvals", "show", "--db", db_url, aid])
    assert json.loads(shown.stdout)["votes"][0]["reason"] == "checked the invoice"
    anonymous = runner.invoke(cli, ["keys", "create", "--db", db_url, "--tenant", "default",
                                    "--name", "frank", "--scopes", "approve"])
    assert anonymous.exit_code == 2
    assert "principal" in anonymous.output
    created = runner.invoke(cli, ["keys", "create", "--db", db_url, "--tenant", "default",
                                  "--name", "frank", "--scopes", "approve", "--totp",
                                  "--principal", "frank", "--format", "json"])
    assert orjson.loads(created.stdout)["totp_uri"].startswith("otpauth://totp/")
    rotated = runner.invoke(cli, ["keys", "rotate-signing", "--db", db_url])
    assert rotated.exit_code == 0
    assert "signing with" in rotated.stdout


def test_rotation_keeps_old_tokens_verifiable(api: Api) -> None:
    from stage0.store.signing import rotate_signing_key  # noqa: PLC0415

    agent = api.new_key(scopes=["check"], principal="bot")
    approver = api.new_key(scopes=["approve"], principal="dana")
    aid = api.check(PAYOUT, key=agent).json()["approval"]["approval_id"]
    vote(api, approver, aid)
    allowed = api.check({**PAYOUT, "context": {**PAYOUT["context"], "approval_id": aid}},
                        key=agent).json()
    old_kid = api.client.get("/.well-known/jwks.json").json()["keys"][0]["kid"]
    rotate_signing_key(api.store)
    jwks = api.client.get("/.well-known/jwks.json").json()
    assert old_kid in {k["kid"] for k in jwks["keys"]}
    assert consume(api, agent, allowed["execution_token"],
                   allowed["action_digest"]).status_code == 200


@pytest.mark.parametrize("backend_index", [0, 1], ids=["sqlite", "postgresql"])
def test_fifty_concurrent_consumptions_across_two_processes(
    backend_index: int, tmp_path: Path
) -> None:
    from tests.service.conftest import BACKENDS, fresh_database  # noqa: PLC0415

    with fresh_database(BACKENDS[backend_index], tmp_path) as url:
        store = Store(url)
        store.migrate()
        _, agent = create_key(store, tenant="default", name="agent", scopes=["check"],
                              principal="bot", plan="pro", unlimited=True)
        _, approver = create_key(store, tenant="default", name="dana", scopes=["approve"],
                                 principal="dana", plan="pro", unlimited=True)
        store.dispose()
        servers = [start_server(url, tmp_path, frozen_time=T0) for _ in range(2)]
        try:
            a, b = (s.url for s in servers)
            h = {"x-api-key": agent}
            aid = httpx.post(f"{a}/check", json=PAYOUT, headers=h, timeout=30).json()[
                "approval"]["approval_id"]
            httpx.post(f"{a}/v1/approvals/{aid}/approve", json={"reason": "ok"},
                       headers={"x-api-key": approver}, timeout=30).raise_for_status()
            allowed = httpx.post(f"{b}/check", headers=h, timeout=30, json={
                **PAYOUT, "context": {**PAYOUT["context"], "approval_id": aid}}).json()
            assert allowed["verdict"] == "ALLOW", allowed["reason"]
            payload = {"token": allowed["execution_token"],
                       "action_digest": allowed["action_digest"]}
            statuses: list[int] = []
            lock = threading.Lock()
            start = threading.Barrier(50)

            def attempt(i: int) -> None:
                start.wait()
                r = httpx.post(f"{(a, b)[i % 2]}/v1/tokens/consume", json=payload, headers=h,
                               timeout=30)
                with lock:
                    statuses.append(r.status_code)

            threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(statuses) == [200] + [409] * 49
        finally:
            for s in servers:
                s.stop()


def test_principals_compare_case_insensitively(db_url: str, tmp_path: Path) -> None:
    with running_app(db_url, frozen_time=T0) as api:
        agent = api.new_key(scopes=["check"], principal="agent-7")
        twin = api.new_key(scopes=["approve"], principal=" Agent-7 ")
        aid = api.check(PAYOUT, key=agent).json()["approval"]["approval_id"]
        refused = vote(api, twin, aid)
        assert (refused.status_code, refused.json()["code"]) == (403, "SELF_APPROVAL")


def test_totp_codes_are_single_use_and_guessing_locks_the_key(db_url: str,
                                                               tmp_path: Path) -> None:
    with running_app(db_url, frozen_time=T0, policy=strict_pack(tmp_path)) as api:
        p = People(api.store)
        first = api.check(PAYOUT, key=p.agent_key).json()["approval"]["approval_id"]
        second = api.check({**PAYOUT, "arguments": {"amount": 1}},
                           key=p.agent_key).json()["approval"]["approval_id"]
        code = totp(p.alice)
        assert vote(api, p.alice_key, first, totp=code).status_code == 200
        replayed = vote(api, p.alice_key, second, totp=code)
        assert (replayed.status_code, replayed.json()["code"]) == (403, "APPROVER_MFA_INVALID")
        wrong = "000000" if totp(p.bob) != "000000" else "111111"
        codes = [vote(api, p.bob_key, second, totp=wrong).json()["code"] for _ in range(5)]
        assert codes == ["APPROVER_MFA_INVALID"] * 5
        locked = vote(api, p.bob_key, second, totp=totp(p.bob))
        assert (locked.status_code, locked.json()["code"]) == (429, "APPROVER_MFA_LOCKED")
        assert int(locked.headers["retry-after"]) > 0
        refusals = [r for r in ledger.export(api.store, tenant="default", since=None,
                                             until=None) if r["kind"] == "approval.refused"]
        assert len(refusals) >= 7


def test_tokens_are_per_tenant_and_need_the_check_scope(api: Api) -> None:
    import uuid  # noqa: PLC0415

    rid = str(uuid.uuid4())
    tokens = {}
    for tenant in ("acme", "globex"):
        agent = api.new_key(tenant=tenant, scopes=["check"], principal=f"bot-{tenant}")
        approver = api.new_key(tenant=tenant, scopes=["approve"], principal=f"boss-{tenant}")
        aid = api.check(PAYOUT, key=agent).json()["approval"]["approval_id"]
        vote(api, approver, aid)
        allowed = api.check({**PAYOUT, "context": {**PAYOUT["context"], "approval_id": aid}},
                            key=agent, **{"x-request-id": rid}).json()
        assert allowed["request_id"] == rid
        tokens[tenant] = (agent, approver, allowed["execution_token"], allowed["action_digest"])
    agent, approver, token, digest = tokens["globex"]
    scoped = consume(api, approver, token, digest)
    assert (scoped.status_code, scoped.json()["code"]) == (403, "TOKEN_SCOPE_MISSING")
    assert consume(api, agent, token, digest).status_code == 200
    agent, _, token, digest = tokens["acme"]
    assert consume(api, agent, token, digest).status_code == 200  # same jti, other tenant


def test_a_batch_reads_its_open_approval_requests_in_one_query(store: Store) -> None:
    """Batches prefetch the open requests of their actions; the answers are those of one query
    per DEFER: the same request for the same action, a new one per new action, votes seen."""
    import time  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    from stage0.contract import parse_request  # noqa: PLC0415
    from stage0.contract.request import parse_instant  # noqa: PLC0415
    from stage0.policy import load_policy  # noqa: PLC0415
    from stage0.server.jobs import Job  # noqa: PLC0415
    from stage0.server.readahead import PREFETCH_FROM  # noqa: PLC0415
    from stage0.server.writer import Writer  # noqa: PLC0415
    from stage0.store.signing import ensure_signing_key  # noqa: PLC0415

    ensure_signing_key(store)
    _, agent = create_key(store, tenant="default", name="agent", scopes=["check"], plan="pro",
                          unlimited=True, principal="agent-7")
    _, approver = create_key(store, tenant="default", name="erin", scopes=["approve"],
                             plan="pro", unlimited=True, principal="erin")
    frozen = parse_instant(T0)
    writer = Writer(store, load_policy(), clock=lambda: frozen)
    bodies = [orjson.dumps({**PAYOUT, "arguments": {**PAYOUT["arguments"], "amount": n}})
              for n in (100, 200, 300)]

    def run(jobs: list[Job]) -> list[dict[str, Any]]:
        return [orjson.loads(o.body) if isinstance(o.body, bytes) else o.body
                for o in writer.process(jobs)]

    def checks(n: int) -> list[Job]:
        return [Job(secret=agent, raw=bodies[i % 3], request=parse_request(bodies[i % 3]),
                    invalid=None, request_id=str(uuid.uuid4()), client_request_id=False,
                    started=time.perf_counter()) for i in range(n)]

    try:
        assert PREFETCH_FROM <= 8
        first = run(checks(8))
        ids = [b["approval"]["approval_id"] for b in first]
        assert len(set(ids)) == 3
        assert ids[:3] == ids[3:6]  # the same action reuses its request within the batch
        opened = writer.approvals.reads.get("open", 0)
        again = run(checks(8))
        assert [b["approval"]["approval_id"] for b in again] == ids  # and across batches
        # all three came from the batch's one prefetch query, none from a read of its own
        assert writer.approvals.reads.get("open", 0) == opened
        vote = {"approval_id": ids[0], "reason": "ok", "totp": None}
        run([Job(secret=approver, raw=orjson.dumps(vote), request=None, invalid=None,
                 request_id=str(uuid.uuid4()), client_request_id=False,
                 started=time.perf_counter(), op="approve", payload=vote)])
        seen = run(checks(8))
        assert seen[0]["approval"]["status"] == "approved"
        assert seen[0]["approval"]["approvals"] == ["erin"]
        assert seen[1]["approval"]["status"] == "pending"

        # runs are read once per batch too, and counted in order across batches
        runs = [orjson.dumps({**orjson.loads(bodies[0]), "context": {
            **PAYOUT["context"], "run_id": f"run-{i % 2}"}}) for i in range(8)]

        def run_jobs() -> list[Job]:
            return [Job(secret=agent, raw=b, request=parse_request(b), invalid=None,
                        request_id=str(uuid.uuid4()), client_request_id=False,
                        started=time.perf_counter()) for b in runs]

        counted = [b["guardrail_checks"]["loop"]["iteration"] for b in run(run_jobs())]
        assert counted == [1, 1, 2, 2, 3, 3, 4, 4]
        counted = [b["guardrail_checks"]["loop"]["iteration"] for b in run(run_jobs())]
        assert counted == [5, 5, 6, 6, 7, 7, 8, 8]
    finally:
        writer.close()


def test_the_writer_takes_its_clock_and_ids_from_its_constructor(store: Store) -> None:
    """Events and sweeps get their ids and instants from the writer's clock and id factory
    (``stage0.testing``'s ``FixedClock`` and ``SequentialIds`` make them reproducible)."""
    import time  # noqa: PLC0415

    from stage0.contract import parse_request  # noqa: PLC0415
    from stage0.policy import load_policy  # noqa: PLC0415
    from stage0.server.jobs import Job  # noqa: PLC0415
    from stage0.server.writer import Writer  # noqa: PLC0415
    from stage0.store.signing import ensure_signing_key  # noqa: PLC0415
    from stage0.testing import FixedClock, SequentialIds  # noqa: PLC0415

    ensure_signing_key(store)
    _, agent = create_key(store, tenant="default", name="agent", scopes=["check"], plan="pro",
                          unlimited=True, principal="agent-7")
    clock, ids = FixedClock(T0), SequentialIds()
    writer = Writer(store, load_policy(), clock=clock, ids=ids, wall_clock=clock)
    body = orjson.dumps(PAYOUT)
    try:
        [outcome] = writer.process([Job(
            secret=agent, raw=body, request=parse_request(body), invalid=None,
            request_id="req-1", client_request_id=True, started=time.perf_counter())])
        assert isinstance(outcome.body, bytes)
        assert orjson.loads(outcome.body)["verdict"] == "DEFER"
        [created], _ = ledger.search(store, "default", kind="approval.created")
        assert created["request_id"] == "00000000-0000-4000-8000-000000000001"
        assert created["created_at"] == clock().timestamp()
        clock.advance(3 * 86400)  # past the request's expiry
        assert writer.sweep().result(timeout=30).body == {"expired": 1, "warned": 0}
        [expired], _ = ledger.search(store, "default", kind="approval.expired")
        # the sweep's own request id was the second id, the event's the third
        assert expired["request_id"] == "00000000-0000-4000-8000-000000000003"
        assert expired["created_at"] == clock().timestamp()
    finally:
        writer.close()
