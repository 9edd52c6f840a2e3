"""Decisions made before the writer takes the lock (``stage0.server.handlers.early``): for a
known key and a check that needs no stored state, the answer is the one the transaction would
give; a check with a ``run_id`` or an ``approval_id``, an unknown key, or a key of another
tenant is decided inside the transaction as before."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from stage0.contract import parse_request
from stage0.engine import Engine
from stage0.policy import load_policy
from stage0.server.handlers.early import StateProbe
from stage0.server.state import state_of
from stage0.server.writer import Writer
from stage0.store import ledger
from stage0.store.keys import list_keys, revoke_key
from stage0.store.signing import Keyring
from tests.conftest import EXAMPLES, Example
from tests.helpers import request
from tests.service.conftest import Api


def _pipeline(api: Api) -> Writer:
    pipeline: Writer = state_of(api.client.app).pipeline
    return pipeline


def _count_evaluations(writer: Writer) -> Callable[[], dict[str, int]]:
    """The checks the writer evaluates from now on: before the lock, and inside."""
    early, locked = writer.stats.early_evaluations, writer.stats.locked_evaluations
    return lambda: {"early": writer.stats.early_evaluations - early,
                    "locked": writer.stats.locked_evaluations - locked}


def _count_joins(writer: Writer) -> Callable[[], int]:
    """How many checks join a waiting batch late from now on (``readahead.join_late``)."""
    before = writer.stats.late_joins
    return lambda: writer.stats.late_joins - before


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    """A response without what differs between two checks of one body (ids, token, times)."""
    body = dict(body)
    for name in ("request_id", "execution_token", "approval", "evaluated_at", "timing_ms"):
        body.pop(name, None)
    return body


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.path.stem for e in EXAMPLES])
def test_an_early_decision_is_the_one_the_transaction_gives(api: Api, example: Example) -> None:
    body = example.request
    ctx = body.get("context") or {}
    stateful = bool(ctx.get("run_id") or ctx.get("approval_id"))
    pipeline = _pipeline(api)
    pipeline.known.clear()
    counts = _count_evaluations(pipeline)
    first = api.check(body)  # the key is not known yet: decided inside the transaction
    assert counts() == {"early": 0, "locked": 1}
    second = api.check(body)
    assert first.status_code == second.status_code == 200
    assert counts() == ({"early": 0, "locked": 2} if stateful else {"early": 1, "locked": 1})
    if not stateful:
        assert _comparable(second.json()) == _comparable(first.json())
        logged = api.client.get(f"/v1/decisions/{second.json()['request_id']}",
                                headers={"x-api-key": api.key})
        assert logged.status_code == 200
        assert logged.json()["response"] == second.json()


def test_an_early_allow_carries_a_valid_token_for_its_tenant(api: Api) -> None:
    body = next(e for e in EXAMPLES if e.path.stem == "protected-request").request
    counts = _count_evaluations(_pipeline(api))
    api.check(body)
    answer = api.check(body).json()
    assert counts()["early"] == 1
    assert answer["verdict"] == "ALLOW"
    frozen = datetime(2026, 3, 17, 10, tzinfo=UTC).timestamp()  # the app's frozen clock
    claims = Keyring(api.store).verify(answer["execution_token"], frozen)
    assert claims["sub"] == "default"
    assert claims["jti"] == answer["request_id"]
    assert claims["action_digest"] == answer["action_digest"]
    assert claims["approval_verified"] is False


def test_a_key_of_another_tenant_is_decided_inside(api: Api) -> None:
    pipeline = _pipeline(api)
    other = api.new_key(tenant="other")
    assert api.check(request(), key=other).status_code == 200
    secret_hash, (_, key_id) = next(iter(pipeline.known.items()))
    pipeline.known[secret_hash] = ("someone-else", key_id)  # what the writer expected is wrong
    counts = _count_evaluations(pipeline)
    answer = api.check(request(), key=other)
    assert answer.status_code == 200
    assert counts() == {"early": 1, "locked": 1}  # the early one was dropped
    assert answer.json()["verdict"] == "ALLOW"


def test_a_revoked_key_gets_401_even_with_an_early_decision(api: Api) -> None:
    key = api.new_key()
    assert api.check(request(), key=key).status_code == 200
    key_id = next(k.id for k in list_keys(api.store) if key.startswith(k.prefix))
    revoke_key(api.store, key_id)
    assert api.check(request(), key=key).status_code == 401
    assert all(known[1] != key_id for known in _pipeline(api).known.values())


def test_the_probe_drops_any_decision_that_asks_for_state() -> None:
    probe = StateProbe()
    engine = Engine(load_policy(None), run_state=probe, approvals=probe)
    body = {**request(), "context": {"run_id": "run-1"}}
    engine.evaluate(parse_request(json.dumps(body).encode()))
    assert probe.touched  # the pipeline drops it; the transaction decides with the run state
    probe.touched = False
    engine.evaluate(parse_request(json.dumps(request()).encode()))
    assert not probe.touched


def test_an_early_decision_too_old_is_made_again(api: Api) -> None:
    pipeline = _pipeline(api)
    pipeline.early.max_age_s = -1.0  # every one is too old
    api.check(request())
    counts = _count_evaluations(pipeline)
    assert api.check(request()).json()["verdict"] == "ALLOW"
    assert counts() == {"early": 1, "locked": 1}


def test_a_usage_window_never_moves_backwards(api: Api) -> None:
    """A row already counting in a later minute (another host's clock a little ahead) goes on
    counting there; it is not reset to the server's earlier minute."""
    key = api.new_key(per_minute=1000, daily_quota=100_000, monthly_quota=1_000_000)
    assert api.check(request(), key=key).status_code == 200
    with api.store.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE key_usage SET minute_key = '2026-03-17T10:01', minute_count = 500, "
            "day_count = 600, month_count = 700")
    assert api.check(request(), key=key).status_code == 200  # the clock is frozen at 10:00
    with api.store.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT minute_key, minute_count, day_count, month_count FROM key_usage").one()
    assert tuple(row) == ("2026-03-17T10:01", 501, 601, 701)


def test_checks_queued_during_a_lock_wait_join_the_batch(api: Api) -> None:
    """PostgreSQL: while a batch waits for its tenant's lock, what queues behind it joins it
    (same key, same tenant) and is answered, logged and chained like the rest."""
    if api.store.dialect != "postgresql":
        pytest.skip("the writer gathers under the lock on SQLite already")
    pipeline = _pipeline(api)
    assert api.check(request()).status_code == 200  # the key is known; its tenant too
    joined = _count_joins(pipeline)
    locker = api.store.engine.raw_connection()
    try:
        cur = locker.cursor()
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('default'))")  # held until commit
        with ThreadPoolExecutor(12) as pool:
            answers = [pool.submit(api.check, request()) for _ in range(12)]
            time.sleep(1.0)  # the first batch waits on the lock; the others queue behind it
            locker.commit()
            statuses = [a.result(timeout=30).status_code for a in answers]
    finally:
        locker.close()
    assert statuses == [200] * 12
    assert joined() > 0  # some joined the batch that waited
    assert all(report.ok for report in ledger.verify(api.store))
    with api.store.connect() as conn:
        logged = conn.exec_driver_sql("SELECT count(*) FROM decisions WHERE kind = 'decision'")
        assert logged.scalar() == 13


def test_a_key_revoked_while_a_batch_waits_is_refused_to_the_checks_that_join_it(
        api: Api) -> None:
    if api.store.dialect != "postgresql":
        pytest.skip("the writer reads keys under the lock on SQLite already")
    pipeline = _pipeline(api)
    key = api.new_key()
    assert api.check(request(), key=key).status_code == 200
    joined = _count_joins(pipeline)
    locker = api.store.engine.raw_connection()
    try:
        locker.cursor().execute("SELECT pg_advisory_xact_lock(hashtext('default'))")
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(api.check, request(), key)  # read the key, waits for the lock
            time.sleep(0.5)
            key_id = next(k.id for k in list_keys(api.store) if key.startswith(k.prefix))
            revoke_key(api.store, key_id)  # confirmed while the batch waits
            second = pool.submit(api.check, request(), key)  # sent after the revocation
            time.sleep(0.5)
            locker.commit()
            assert first.result(timeout=30).status_code == 200  # sent before it
            assert second.result(timeout=30).status_code == 401
    finally:
        locker.close()
    assert joined() == 1  # the second joined the waiting batch, with the key re-read
