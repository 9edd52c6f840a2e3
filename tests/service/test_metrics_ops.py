"""#16 item 3: the operations metrics — approvals (created, decided, expired, time to decision),
execution tokens (issued, consumed, refused), webhook deliveries, loop-limit hits and per-route
latency — on SQLite and PostgreSQL, counted only once their batch commits; and `/metrics`
behind its setting (`STAGE0_METRICS_AUTH`, `STAGE0_METRICS_TOKEN`; docs/operations.md#metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stage0.server.state import state_of
from stage0.store.keys import create_key
from stage0.store.transaction import Transaction
from stage0.store.webhooks import add_webhook
from tests.helpers import request
from tests.service.conftest import Api, fresh_database, running_app
from tests.service.test_approvals import PAYOUT

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(api: Api, **headers: str) -> Samples:
    response = api.client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    found: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(api: Api, action: Callable[[], Any]) -> Callable[..., float]:
    """Run ``action``; a function of (name, labels) giving how much the sample moved."""
    before = scrape(api)
    action()
    after = scrape(api)
    return lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)


def payout(amount: int) -> dict[str, Any]:
    return {**PAYOUT, "arguments": {**PAYOUT["arguments"], "amount": amount}}


@pytest.fixture
def people(api: Api) -> dict[str, str]:
    _, agent = create_key(api.store, tenant="default", name="agent", scopes=["check"],
                          principal="agent-7", plan="pro", unlimited=True)
    _, alice = create_key(api.store, tenant="default", name="alice", scopes=["approve"],
                          principal="alice", plan="pro", unlimited=True)
    return {"agent": agent, "alice": alice}


def vote(api: Api, key: str, approval_id: str, op: str) -> httpx.Response:
    response = api.client.post(f"/v1/approvals/{approval_id}/{op}", json={"reason": "ok"},
                               headers={"x-api-key": key})
    assert response.status_code == 200, response.text
    return response


def test_approvals_and_tokens_are_counted(api: Api, people: dict[str, str]) -> None:
    agent, alice = people["agent"], people["alice"]
    first: dict[str, Any] = {}

    def deferred() -> None:
        first.update(api.check(payout(1250), key=agent).json())
        assert first["verdict"] == "DEFER"
        api.check(payout(1250), key=agent)  # the same action: the same approval, not counted

    delta = moved(api, deferred)
    assert delta("stage0_approvals_created_total", kind="approval") == 1
    approval_id = first["approval"]["approval_id"]

    delta = moved(api, lambda: vote(api, alice, approval_id, "approve"))
    assert delta("stage0_approvals_decided_total", decision="approved") == 1
    assert delta("stage0_approval_decision_seconds_count", decision="approved") == 1
    assert delta("stage0_approval_decision_seconds_sum", decision="approved") >= 0

    allowed: dict[str, Any] = {}

    def allow() -> None:
        body = payout(1250)
        allowed.update(api.check({**body, "context": {**body["context"],
                                                      "approval_id": approval_id}},
                                 key=agent).json())

    delta = moved(api, allow)
    assert allowed["verdict"] == "ALLOW", allowed
    assert delta("stage0_tokens_issued_total") == 1

    def consume() -> None:
        for _ in range(2):
            api.client.post("/v1/tokens/consume", headers={"x-api-key": agent}, json={
                "token": allowed["execution_token"],
                "action_digest": allowed["action_digest"]})
        api.client.post("/v1/tokens/consume", headers={"x-api-key": agent}, json={
            "token": "not-a-token", "action_digest": allowed["action_digest"]})

    delta = moved(api, consume)
    assert delta("stage0_tokens_consumed_total") == 1
    assert delta("stage0_tokens_refused_total", reason="TOKEN_ALREADY_CONSUMED") == 1
    assert delta("stage0_tokens_refused_total", reason="TOKEN_INVALID") == 1

    def rejected() -> None:
        body = api.check(payout(99), key=agent).json()
        vote(api, alice, body["approval"]["approval_id"], "reject")

    delta = moved(api, rejected)
    assert delta("stage0_approvals_created_total", kind="approval") == 1
    assert delta("stage0_approvals_decided_total", decision="rejected") == 1
    assert delta("stage0_approval_decision_seconds_count", decision="rejected") == 1


def test_expired_approvals_are_counted(api: Api, people: dict[str, str]) -> None:
    assert api.check(payout(7), key=people["agent"]).json()["verdict"] == "DEFER"
    pipeline = state_of(api.client.app).pipeline
    frozen = pipeline.clock()

    def sweep() -> None:
        pipeline.clock = lambda: frozen + timedelta(days=30)
        try:
            assert pipeline.sweep().result(timeout=30).body["expired"] >= 1  # type: ignore[index]
        finally:
            pipeline.clock = lambda: frozen

    delta = moved(api, sweep)
    assert delta("stage0_approvals_expired_total") >= 1


def test_loop_limit_hits_are_counted_by_code(api: Api) -> None:
    looping = request(constraints=["max_iterations: 3"],
                      context={"run_id": "run-loop", "current_iteration": 9})

    delta = moved(api, lambda: api.check(looping))
    assert delta("stage0_loop_limit_hits_total", code="LOOP_ITERATION_LIMIT") == 1
    assert moved(api, lambda: api.check(request()))(
        "stage0_loop_limit_hits_total", code="LOOP_ITERATION_LIMIT") == 0


def test_a_batch_that_fails_counts_nothing(api: Api, people: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The handlers count into the batch's tally; a batch whose commit fails (503, fail
    closed) flushes none of it."""
    def broken(self: Transaction) -> None:
        raise RuntimeError("disk full")

    def failing() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(Transaction, "save", broken)
            assert api.check(payout(4242), key=people["agent"]).status_code == 503

    delta = moved(api, failing)
    assert delta("stage0_approvals_created_total", kind="approval") == 0
    assert delta("stage0_fail_closed_total", reason="store") == 1
    # and the next batch counts its own
    delta = moved(api, lambda: api.check(payout(4242), key=people["agent"]))
    assert delta("stage0_approvals_created_total", kind="approval") == 1


def _answering(status: int) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(status)))


def test_webhook_deliveries_are_counted_by_outcome(api: Api, people: dict[str, str]) -> None:
    state = state_of(api.client.app)
    add_webhook(api.store, "default", "https://hooks.example.com/stage0", ["approval.created"])

    def wait_for(outcome: str, before: float, amount: int) -> float:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = value(scrape(api), "stage0_webhook_deliveries_total", outcome=outcome)
            if now - before >= amount:
                return now - before
            time.sleep(0.1)
        return now - before

    state.deliverer._client = _answering(500)
    before = value(scrape(api), "stage0_webhook_deliveries_total", outcome="retry")
    api.check(payout(11), key=people["agent"])
    assert wait_for("retry", before, 1) >= 1

    state.deliverer._client = _answering(204)
    before = value(scrape(api), "stage0_webhook_deliveries_total", outcome="delivered")
    api.check(payout(12), key=people["agent"])
    assert wait_for("delivered", before, 1) >= 1


def test_every_routed_request_is_timed_by_its_route_template(api: Api) -> None:
    def calls() -> None:
        api.client.get("/usage", headers={"x-api-key": api.key})
        api.client.get("/v1/decisions/00000000-0000-4000-8000-000000000000",
                       headers={"x-api-key": api.key})
        api.client.get("/no/such/route")
        api.client.get("/console/login")
        api.client.get("/docs/static/swagger-ui.css")

    delta = moved(api, calls)
    count = "stage0_http_request_seconds_count"
    assert delta(count, route="/usage", method="GET", status="2xx") == 1
    assert delta(count, route="/v1/decisions/{request_id}", method="GET", status="4xx") == 1
    assert delta(count, route="(unrouted)", method="GET", status="4xx") == 1
    assert delta(count, route="/console/login", method="GET", status="2xx") == 1
    assert delta(count, route="/docs/static/*", method="GET", status="2xx") == 1
    # POST /check stays on its fast path, timed by stage0_check_seconds
    delta = moved(api, lambda: api.check(request()))
    assert delta("stage0_check_seconds_count") == 1
    assert delta(count, route="/check", method="POST", status="2xx") == 0


# -- protecting /metrics ---------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("sqlite", tmp_path) as url:
        yield url


def test_metrics_are_open_by_default(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGE0_METRICS_AUTH", raising=False)
    monkeypatch.delenv("STAGE0_METRICS_TOKEN", raising=False)
    with running_app(sqlite_url) as api:
        assert api.client.get("/metrics").status_code == 200


def test_a_metrics_token_is_required_once_set(sqlite_url: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGE0_METRICS_AUTH", raising=False)
    monkeypatch.setenv("STAGE0_METRICS_TOKEN", "scrape-secret-1")
    with running_app(sqlite_url) as api:
        for headers in ({}, {"authorization": "Bearer wrong"},
                        {"authorization": "Basic scrape-secret-1"}, {"x-api-key": api.key}):
            refused = api.client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["code"] == "METRICS_TOKEN_INVALID"
        allowed = api.client.get("/metrics", headers={"authorization": "Bearer scrape-secret-1"})
        assert allowed.status_code == 200
        assert "stage0_decisions_total" in allowed.text
        # the refusals are counted like every other
        assert 'stage0_refused_total{route="/metrics",status="401"}' in allowed.text


def test_metrics_can_need_an_api_key_with_audit_read(sqlite_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGE0_METRICS_AUTH", "key")
    monkeypatch.delenv("STAGE0_METRICS_TOKEN", raising=False)
    with running_app(sqlite_url) as api:
        assert api.client.get("/metrics").status_code == 401
        agent = api.new_key(scopes=["check"])
        denied = api.client.get("/metrics", headers={"x-api-key": agent})
        assert (denied.status_code, denied.json()["code"]) == (403, "SCOPE_MISSING")
        auditor = api.new_key(scopes=["audit:read"])
        assert api.client.get("/metrics", headers={"x-api-key": auditor}).status_code == 200
        assert api.client.get("/metrics", headers={
            "authorization": f"Bearer {auditor}"}).status_code == 200


@pytest.mark.parametrize(("auth", "token"), [("token", None), ("everyone", None)])
def test_a_bad_metrics_setting_stops_the_start(sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
                                               auth: str, token: str | None) -> None:
    monkeypatch.setenv("STAGE0_METRICS_AUTH", auth)
    monkeypatch.delenv("STAGE0_METRICS_TOKEN", raising=False)
    with pytest.raises(ValueError, match="STAGE0_METRICS_AUTH"), running_app(sqlite_url):
        pass


def test_break_glass_declarations_are_counted(db_url: str) -> None:
    from tests.service.test_break_glass import DEPLOY, SATURDAY, People, declare  # noqa: PLC0415

    with running_app(db_url, frozen_time=SATURDAY) as api:
        p = People(api)
        held = api.check(DEPLOY, key=p.agent).json()
        assert held["verdict"] == "DEFER"

        def declared() -> None:
            response = declare(api, p.irene, held["request_id"])
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "approved"

        delta = moved(api, declared)
        assert delta("stage0_approvals_created_total", kind="break_glass") == 1
        assert delta("stage0_approvals_decided_total", decision="approved") == 1
        assert delta("stage0_approval_decision_seconds_count", decision="approved") == 1
