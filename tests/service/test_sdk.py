"""The SDK: clients that fail closed, LocalEngine, and the guard, end to end."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import stage0
from stage0.sdk import ActionDeferred, ActionDenied, AsyncClient, Client, LocalEngine
from stage0.testing import make_engine
from tests.conftest import EXAMPLES, Example
from tests.service.conftest import Api, free_port, running_app

BY_TIME = {t: list(g) for t, g in itertools.groupby(
    sorted(EXAMPLES, key=lambda e: e.evaluated_at), key=lambda e: e.evaluated_at)}


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_examples_through_the_local_engine(example: Example) -> None:
    result = LocalEngine(engine=make_engine(example.evaluated_at)).check(example.request)
    example.check(result.body)


@pytest.mark.parametrize("evaluated_at", sorted(BY_TIME))
def test_examples_through_the_client(db_url: str, evaluated_at: str) -> None:
    with running_app(db_url, frozen_time=evaluated_at) as api:
        for example in BY_TIME[evaluated_at]:
            key = api.new_key(tenant=f"sdk-{example.name}")
            result = Client(api_key=key, http_client=api.client).check(example.request)
            assert result.status_code == 200
            example.check(result.body)


def mock(handler: Any) -> Client:
    return Client(api_key="k", http_client=httpx.Client(
        transport=httpx.MockTransport(handler), base_url="http://stage0.test"))


@pytest.mark.parametrize(
    ("note", "handler", "code"),
    [
        ("5xx", lambda r: httpx.Response(500, text="boom"), "SERVICE_UNAVAILABLE"),
        ("503 body", lambda r: httpx.Response(503, json={"detail": "log down",
                                                         "verdict": "DENY"}),
         "SERVICE_UNAVAILABLE"),
        ("malformed", lambda r: httpx.Response(200, text="{not json"), "SERVICE_UNAVAILABLE"),
        ("unknown verdict", lambda r: httpx.Response(200, json={"verdict": "MAYBE"}),
         "SERVICE_UNAVAILABLE"),
        ("mismatched pair", lambda r: httpx.Response(200, json={"verdict": "ALLOW",
                                                                "decision": "NO_GO"}),
         "SERVICE_UNAVAILABLE"),
        ("missing verdict", lambda r: httpx.Response(200, json={"decision": "GO"}),
         "SERVICE_UNAVAILABLE"),
        ("401", lambda r: httpx.Response(401, json={"detail": "bad key", "request_id": "x"}),
         "SERVICE_REFUSED"),
        ("timeout", lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)),
         "SERVICE_UNAVAILABLE"),
    ],
)
def test_the_client_fails_closed(note: str, handler: Any, code: str) -> None:
    result = mock(handler).check("Refund order 1042 to the customer")
    assert (result.verdict, result.decision, result.allowed) == ("DENY", "ERROR", False), note
    assert result.issue_codes == [code]


def test_rate_limits_carry_retry_after() -> None:
    result = mock(lambda r: httpx.Response(
        429, json={"detail": "Rate limit exceeded", "request_id": "r",
                   "retry_after_seconds": 17})).check("Refund order 1042")
    assert result.retry_after == 17
    assert result.status_code == 429
    assert not result.allowed


def test_nothing_listening_denies() -> None:
    client = Client(base_url=f"http://127.0.0.1:{free_port()}", api_key="k", timeout=1)
    result = client.check("Refund order 1042 to the customer")
    assert result.verdict == "DENY"
    assert result.issue_codes == ["SERVICE_UNAVAILABLE"]
    client.close()


def test_defaults_come_from_the_hosted_api_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGE0_API_BASE", "http://stage0.internal:9000/")
    monkeypatch.setenv("STAGE0_API_KEY", "s0_from_env")
    client = stage0.Client()
    assert (client.base_url, client.api_key) == ("http://stage0.internal:9000", "s0_from_env")
    client.close()


def test_local_engine_rejects_invalid_requests() -> None:
    result = LocalEngine().check({"goal": ""})
    assert (result.verdict, result.status_code, result.allowed) == ("DENY", 422, False)


@pytest.fixture
def live_api(db_url: str) -> Iterator[Api]:
    """The service on the real clock: runtimes verify execution tokens against real time."""
    with running_app(db_url, frozen_time=None) as a:
        yield a


PAYOUT_KW = {"side_effects": ["money movement"], "constraints": ["approval required"],
             "environment": "production", "success_criteria": ["The vendor is paid"],
             "goal": "Pay a vendor invoice"}


def people(api: Api) -> tuple[Client, Client]:
    agent = Client(api_key=api.new_key(scopes=["check"], principal="agent-7"),
                   http_client=api.client)
    approver = Client(api_key=api.new_key(scopes=["approve", "audit:read"], principal="dana"),
                      http_client=api.client)
    return agent, approver


def test_guard_defers_then_runs_once_approved(live_api: Api) -> None:
    api = live_api
    agent, approver = people(api)
    ran: list[tuple[str, int]] = []

    @stage0.guard(tool="payments.create_payout", client=agent, **PAYOUT_KW)
    def pay(vendor: str, amount: int) -> str:
        ran.append((vendor, amount))
        return "paid"

    with pytest.raises(ActionDeferred) as deferred:
        pay("acme", 1250)
    assert ran == []
    approval = deferred.value.approval
    assert approval is not None
    assert approval["action"]["arguments"] == {"vendor": "acme", "amount": 1250}
    assert deferred.value.request_id
    assert approver.approvals.list()[0]["approval_id"] == approval["approval_id"]
    approver.approvals.approve(approval["approval_id"], reason="invoice matches")

    @stage0.guard(tool="payments.create_payout", client=agent, wait_for_approval=5, **PAYOUT_KW)
    def pay_when_approved(vendor: str, amount: int) -> str:
        ran.append((vendor, amount))
        return "paid"

    assert pay_when_approved("acme", 1250) == "paid"
    assert ran == [("acme", 1250)]
    with pytest.raises(ActionDeferred):  # other arguments: a different action, a new approval
        pay("acme", 99_999)
    tokens = list(api.client.get("/v1/decisions?kind=token.consumed",
                                 headers={"x-api-key": api.key}).json()["items"])
    assert len(tokens) == 1


def test_guard_waits_for_an_approval_given_meanwhile(live_api: Api) -> None:
    api = live_api
    agent, approver = people(api)

    def approve_soon() -> None:
        for _ in range(100):
            pending = approver.approvals.list()
            if pending:
                approver.approvals.approve(pending[0]["approval_id"])
                return
            time.sleep(0.05)

    threading.Thread(target=approve_soon, daemon=True).start()

    @stage0.guard(tool="payments.create_payout", client=agent, wait_for_approval=10,
                  **PAYOUT_KW)
    def pay(vendor: str, amount: int) -> str:
        return f"paid {vendor} {amount}"

    assert pay("acme", 10) == "paid acme 10"


def test_guard_denies_and_does_not_run(live_api: Api) -> None:
    api = live_api
    agent, _ = people(api)
    ran = []

    @stage0.guard(tool="db.delete_rows", side_effects=["delete"], client=agent)
    def delete(table: str) -> None:
        ran.append(table)

    with pytest.raises(ActionDenied) as denied:
        delete("customers")
    assert ran == []
    assert "SIDE_EFFECTS_NEED_GUARDRAILS" in [i["code"] for i in denied.value.issues]
    assert denied.value.policy_version == "stage0-policy-pack@1.0.0"


def test_guarded_block_and_local_engine() -> None:
    local = LocalEngine()
    with stage0.guarded("tickets.search", {"query": "refund"}, client=local,
                        success_criteria=["found"]) as decision:
        assert decision.allowed
    with pytest.raises(ActionDenied), stage0.guarded(
        "db.delete_rows", {"table": "x"}, side_effects=["delete"], client=local
    ):
        pytest.fail("the block must not run")


def test_a_consumed_token_cannot_be_reused(live_api: Api) -> None:
    api = live_api
    agent, approver = people(api)
    result = agent.check("Pay a vendor invoice", tools=["payments.create_payout"],
                         side_effects=["money movement"], constraints=["approval required"],
                         context={"environment": "production"}, arguments={"amount": 5})
    approval = result.approval
    assert approval is not None
    approver.approvals.approve(approval["approval_id"])
    allowed = agent.check("Pay a vendor invoice", tools=["payments.create_payout"],
                          side_effects=["money movement"], constraints=["approval required"],
                          context={"environment": "production",
                                   "approval_id": approval["approval_id"]},
                          arguments={"amount": 5})
    assert allowed.allowed
    token, digest = allowed.execution_token, allowed.action_digest
    assert token
    assert digest
    claims = agent.verify_token(token, digest)
    assert claims["jti"] == allowed.request_id
    agent.consume_token(token, digest)
    with pytest.raises(stage0.TokenRejected) as again:
        agent.consume_token(token, digest)
    assert again.value.code == "TOKEN_ALREADY_CONSUMED"
    with pytest.raises(stage0.TokenRejected):
        agent.verify_token(token, "0" * 64)
    assert agent.usage()["monthly_used"] == 2


def test_async_guard(live_api: Api) -> None:
    api = live_api
    agent_key = api.new_key(scopes=["check"], principal="bot")
    approver = Client(api_key=api.new_key(scopes=["approve"], principal="erin"),
                      http_client=api.client)
    app = api.client.app

    async def scenario() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://s") as http:
            client = AsyncClient(api_key=agent_key, http_client=http)

            @stage0.guard(tool="payments.create_payout", client=client, **PAYOUT_KW)
            async def pay(vendor: str, amount: int) -> str:
                return f"paid {vendor}"

            with pytest.raises(ActionDeferred) as deferred:
                await pay("acme", 7)
            approval = deferred.value.approval
            assert approval is not None
            async_approver = AsyncClient(api_key=approver.api_key, http_client=http)
            listed = await async_approver.approvals.list()
            assert [a["approval_id"] for a in listed] == [approval["approval_id"]]
            decided = await async_approver.approvals.approve(approval["approval_id"])
            assert decided["status"] == "approved"

            @stage0.guard(tool="payments.create_payout", client=client, wait_for_approval=5,
                          **PAYOUT_KW)
            async def pay_again(vendor: str, amount: int) -> str:
                return f"paid {vendor}"

            return await pay_again("acme", 7)

    assert asyncio.run(scenario()) == "paid acme"


def test_guard_denies_when_the_awaited_approval_is_rejected(live_api: Api) -> None:
    agent, approver = people(live_api)

    def reject_soon() -> None:
        for _ in range(100):
            pending = approver.approvals.list()
            if pending:
                approver.approvals.reject(pending[0]["approval_id"], reason="no")
                return
            time.sleep(0.05)

    threading.Thread(target=reject_soon, daemon=True).start()

    @stage0.guard(tool="payments.create_payout", client=agent, wait_for_approval=10,
                  **PAYOUT_KW)
    def pay(vendor: str, amount: int) -> str:
        return "paid"

    with pytest.raises(ActionDenied) as denied:
        pay("acme", 3)
    assert "APPROVAL_REJECTED" in [i["code"] for i in denied.value.issues]


def test_the_async_client_wraps_network_errors() -> None:
    async def scenario() -> None:
        client = AsyncClient(base_url=f"http://127.0.0.1:{free_port()}", api_key="k", timeout=1)
        try:
            with pytest.raises(stage0.TokenRejected):
                await client.consume_token("t", "0" * 64)
            with pytest.raises(stage0.StageZeroError):
                await client.usage()
            with pytest.raises(stage0.StageZeroError):
                await client.wait_for_approval("apr_x", timeout=1)
            result = await client.check("Refund order 1042 to the customer")
            assert result.issue_codes == ["SERVICE_UNAVAILABLE"]
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_guard_uses_an_approval_granted_since_without_waiting(live_api: Api) -> None:
    agent, approver = people(live_api)

    @stage0.guard(tool="payments.create_payout", client=agent, **PAYOUT_KW)
    def pay(vendor: str, amount: int) -> str:
        return "paid"

    with pytest.raises(ActionDeferred) as deferred:
        pay("acme", 42)
    approval = deferred.value.approval
    assert approval is not None
    approver.approvals.approve(approval["approval_id"])
    assert pay("acme", 42) == "paid"  # the open, granted request is used at once
    with pytest.raises(ActionDeferred):  # and only once
        pay("acme", 42)
