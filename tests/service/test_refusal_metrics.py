"""``stage0_refused_total``: every refusal before evaluation is counted in ``/metrics`` by status
and route — on the ASGI fast path of ``POST /check``, on its routed twin, and on the other
routes (docs/http.md, ``GET /metrics``)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stage0.store.keys import create_key, list_keys, revoke_key
from tests.helpers import request
from tests.service.conftest import Api

Refusals = Counter[tuple[str, str]]


def refused(api: Api) -> Refusals:
    """``stage0_refused_total`` as scraped from ``/metrics``: {(status, route): value}."""
    response = api.client.get("/metrics")
    assert response.status_code == 200
    found: Refusals = Counter()
    for family in text_string_to_metric_families(response.text):
        if family.name != "stage0_refused":
            continue
        for sample in family.samples:
            if sample.name == "stage0_refused_total":
                assert set(sample.labels) == {"status", "route"}, sample.labels  # stable set
                found[(sample.labels["status"], sample.labels["route"])] += int(sample.value)
    return found


def moved(api: Api, action: Callable[[], None]) -> Refusals:
    before = refused(api)
    action()
    after = refused(api)
    return Counter({k: after[k] - before[k] for k in after if after[k] != before[k]})


def _key(api: Api, **kw: object) -> str:
    return create_key(api.store, tenant="default", name=f"m-{uuid.uuid4().hex[:6]}",
                      **kw)[1]  # type: ignore[arg-type]


@pytest.fixture(params=["fast", "routed"])
def path(request: pytest.FixtureRequest, api: Api) -> Iterator[str]:
    """``fast``: the raw-ASGI answer of ``POST /check``; ``routed``: the same request through
    FastAPI's router (what any other ASGI entry gets)."""
    app = api.client.app
    handler = app.check_handler  # type: ignore[attr-defined]
    if request.param == "routed":
        app.check_handler = None  # type: ignore[attr-defined]
    yield str(request.param)
    app.check_handler = handler  # type: ignore[attr-defined]


def test_every_check_refusal_is_counted_once_by_status(api: Api, path: str) -> None:
    revoked = _key(api, plan="pro", unlimited=True)
    revoke_key(api.store, next(k.id for k in list_keys(api.store) if k.prefix == revoked[:10]))
    free = _key(api, plan="free", unlimited=True)
    monthly = _key(api, plan="pro", monthly_quota=1)
    per_minute = _key(api, plan="pro", per_minute=1)
    daily = _key(api, plan="pro", daily_quota=1)
    reader = _key(api, scopes=["audit:read"], plan="pro", unlimited=True)
    rid = str(uuid.uuid4())

    def refusals() -> None:
        statuses = [
            api.client.post("/check", json=request()).status_code,  # no key
            api.check(request(), key="s0_not_a_key").status_code,  # invalid
            api.check(request(), key=revoked).status_code,  # revoked
            api.check(request(pro=True), key=free).status_code,  # plan
            api.check(request(), key=reader).status_code,  # scope
        ]
        assert api.check(request(), key=monthly).status_code == 200
        statuses.append(api.check(request(), key=monthly).status_code)  # monthly quota
        assert api.check(request(), key=per_minute).status_code == 200
        statuses.append(api.check(request(), key=per_minute).status_code)  # per minute
        assert api.check(request(), key=daily).status_code == 200
        statuses.append(api.check(request(), key=daily).status_code)  # daily
        assert api.check(request(), **{"x-request-id": rid}).status_code == 200
        replay = api.check(request(), **{"x-request-id": rid})
        assert replay.headers.get("idempotent-replay") == "true"  # a replay is no refusal
        statuses.append(api.check(request(goal="Another goal entirely, for the team"),
                                  **{"x-request-id": rid}).status_code)  # reused id
        assert statuses == [401, 401, 401, 402, 403, 402, 429, 429, 409]

    assert moved(api, refusals) == {("401", "/check"): 3, ("402", "/check"): 2,
                                    ("403", "/check"): 1, ("409", "/check"): 1,
                                    ("429", "/check"): 2}


def test_answers_are_not_refusals(api: Api, path: str) -> None:
    def answers() -> None:
        assert api.check(request()).status_code == 200
        assert api.check({"goal": 3}).status_code == 422  # logged, counted as a DENY
    assert moved(api, answers) == {}


def test_refusals_on_the_other_routes_are_counted_by_route(api: Api) -> None:
    checker = _key(api, scopes=["check"], plan="pro", unlimited=True)
    missing = f"/v1/approvals/{uuid.uuid4()}"

    def refusals() -> None:
        assert api.client.get("/usage").status_code == 401
        assert api.client.get("/usage", headers={"x-api-key": "s0_nope"}).status_code == 401
        assert api.client.get("/v1/decisions",
                              headers={"x-api-key": checker}).status_code == 403
        assert api.client.get(f"/v1/decisions/{uuid.uuid4()}",
                              headers={"x-api-key": checker}).status_code == 403
        assert api.client.get("/v1/approvals", headers={"x-api-key": checker}).status_code == 403
        assert api.client.post(f"{missing}/approve", json={}).status_code == 401
        assert api.client.post(f"{missing}/reject", json={},
                               headers={"x-api-key": checker}).status_code == 403
        assert api.client.post("/v1/tokens/consume", json={
            "token": "x", "action_digest": "0" * 64}).status_code == 401
        # not refusals: a decision that is not there, a body that does not validate
        assert api.client.get(f"/v1/decisions/{uuid.uuid4()}",
                              headers={"x-api-key": api.key}).status_code == 404
        assert api.client.post("/v1/break-glass", json={},
                               headers={"x-api-key": api.key}).status_code == 422

    assert moved(api, refusals) == {
        ("401", "/usage"): 2,
        ("403", "/v1/decisions"): 1,
        ("403", "/v1/decisions/{request_id}"): 1,
        ("403", "/v1/approvals"): 1,
        ("401", "/v1/approvals/{approval_id}/approve"): 1,
        ("403", "/v1/approvals/{approval_id}/reject"): 1,
        ("401", "/v1/tokens/consume"): 1,
    }


def test_approval_refusals_are_counted_over_the_api_and_in_the_console(api: Api) -> None:
    from tests.service.test_approvals import PAYOUT, People  # noqa: PLC0415
    from tests.service.test_console import _console  # noqa: PLC0415

    people = People(api.store)
    approval_id = api.check(PAYOUT, key=people.agent_key).json()["approval"]["approval_id"]
    selfie = _console(api)
    assert selfie.sign_in(people.selfie_key).status_code == 303
    auditor_key = _key(api, scopes=["audit:read"])
    auditor = _console(api)
    assert auditor.sign_in(auditor_key).status_code == 303

    def refusals() -> None:
        own = api.client.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "mine"},
                              headers={"x-api-key": people.selfie_key})
        assert (own.status_code, own.json()["code"]) == (403, "SELF_APPROVAL")
        assert "you (or your key) requested it" in selfie.decide(approval_id, totp="1").text
        assert "lacks the approve scope" in auditor.decide(approval_id, htmx=False).text

    assert moved(api, refusals) == {
        ("403", "/v1/approvals/{approval_id}/approve"): 1,
        ("403", "/console/approvals/{approval_id}/approve"): 2,
    }
