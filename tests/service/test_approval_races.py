"""One approval, one execution: runtimes that retry at once after an approval, across two real
``stage0 serve`` processes on one database (SQLite and PostgreSQL).

Exactly one retry is allowed; every other one is a DENY with the one code
``APPROVAL_ALREADY_USED``, and none opens a new approval request (nothing new in the approvers'
inbox). Through the SDK's guard, waiting runtimes run the function once between them.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

import stage0
from stage0.sdk.guard import ActionBlocked, ActionDenied
from stage0.store import Store, ledger
from stage0.store.keys import create_key
from tests.service.conftest import BACKENDS, Server, fresh_database, start_server

RACERS = 24
PAYOUT: dict[str, Any] = {
    "goal": "Release the manual payout for invoice 2231",
    "success_criteria": ["The vendor is paid"],
    "tools": ["payments.create_payout"],
    "side_effects": ["money movement"],
    "constraints": ["approval required"],
    "arguments": {"vendor": "acme-supplies", "amount": 1250, "currency": "EUR"},
    "context": {"environment": "production", "actor_id": "agent-7"},
}


def _keys(url: str) -> tuple[str, str, str]:
    """An agent key, an approver key and an auditor key, made before the servers start."""
    store = Store(url)
    try:
        store.migrate()

        def key(name: str, scopes: list[str]) -> str:
            return create_key(store, tenant="default", name=name, scopes=scopes,
                              principal=name, plan="pro", unlimited=True)[1]

        return (key("agent-7", ["check"]), key("dana", ["approve"]),
                key("auditor", ["audit:read", "approve"]))
    finally:
        store.dispose()


def _serve(url: str, tmp_path: Path) -> Server:
    with warnings.catch_warnings():  # the log file handle start_server leaves open
        warnings.simplefilter("ignore", ResourceWarning)
        return start_server(url, tmp_path)  # the real clock: tokens are verified against it


def _race(n: int, attempt: Any) -> list[Any]:
    """``attempt(i)`` in ``n`` threads released at once; their results (or exceptions)."""
    start = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = attempt(i)
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def _approvals(url: str, auditor: str) -> list[str]:
    items = httpx.get(f"{url}/v1/approvals", headers={"x-api-key": auditor}, timeout=30,
                      params={"limit": 500}).json()["items"]
    return [a["approval_id"] for a in items]


def _events(db_url: str, kind: str) -> int:
    store = Store(db_url)
    try:
        return sum(1 for r in ledger.export(store, tenant="default", since=None, until=None)
                   if r["kind"] == kind)
    finally:
        store.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_retries_after_one_approval(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path) as url:
        agent, approver, auditor = _keys(url)
        servers = [_serve(url, tmp_path) for _ in range(2)]
        try:
            urls = [s.url for s in servers]
            h = {"x-api-key": agent}
            first = httpx.post(f"{urls[0]}/check", json=PAYOUT, headers=h, timeout=30).json()
            aid = first["approval"]["approval_id"]
            httpx.post(f"{urls[1]}/v1/approvals/{aid}/approve", json={"reason": "ok"},
                       headers={"x-api-key": approver}, timeout=30).raise_for_status()
            retry = {**PAYOUT, "context": {**PAYOUT["context"], "approval_id": aid}}

            answers = _race(RACERS, lambda i: httpx.post(
                f"{urls[i % 2]}/check", json=retry, headers=h, timeout=60).json())

            assert Counter(a["verdict"] for a in answers) == {"ALLOW": 1, "DENY": RACERS - 1}
            [winner] = [a for a in answers if a["verdict"] == "ALLOW"]
            assert winner["execution_token"]
            losers = [a for a in answers if a["verdict"] == "DENY"]
            # one clear code for every loser, naming the decision that used the approval
            assert {tuple(i["code"] for i in a["issues"] if i["effect"] != "NONE")
                    for a in losers} == {("APPROVAL_ALREADY_USED",)}
            assert all(winner["request_id"] in a["reason"] for a in losers)
            assert all("approval" not in a and "execution_token" not in a for a in losers)
            # no noise: the inbox holds the one request, used once
            assert _approvals(urls[0], auditor) == [aid]
            assert _events(url, "approval.created") == 1
            assert _events(url, "approval.used") == 1
        finally:
            for s in servers:
                s.stop()


class SignallingClient(stage0.Client):
    """The SDK's client, saying when its guard starts waiting for an approval (and polling
    briskly, so that the test is quick)."""

    def __init__(self, base_url: str, api_key: str, waiting: threading.Semaphore) -> None:
        super().__init__(base_url, api_key, timeout=60)
        self.waiting = waiting

    def wait_for_approval(self, approval_id: str, timeout: float = 300.0, *,
                          initial_delay: float = 0.5, max_delay: float = 10.0,
                          ) -> dict[str, Any]:
        self.waiting.release()
        return super().wait_for_approval(approval_id, timeout, initial_delay=0.05,
                                         max_delay=0.2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_guarded_runtimes_waiting_on_one_approval_run_once(backend: str,
                                                           tmp_path: Path) -> None:
    """Workers guarded by ``stage0.guard(wait_for_approval=...)`` all defer on the same action
    and wait for its one approval; once it is granted they retry together: one runs the
    function, the others get ``ActionDenied`` with ``APPROVAL_ALREADY_USED``."""
    workers = 8
    with fresh_database(backend, tmp_path) as url:
        agent, approver, auditor = _keys(url)
        servers = [_serve(url, tmp_path) for _ in range(2)]
        waiting = threading.Semaphore(0)
        ran: list[int] = []
        try:
            urls = [s.url for s in servers]

            def worker(i: int) -> str:
                with SignallingClient(urls[i % 2], agent, waiting) as client:
                    @stage0.guard(tool="payments.create_payout",
                                  side_effects=["money movement"],
                                  constraints=["approval required"], environment="production",
                                  context={"actor_id": "agent-7"}, client=client,
                                  goal=PAYOUT["goal"], success_criteria=["The vendor is paid"],
                                  wait_for_approval=60)
                    def create_payout(vendor: str, amount: int) -> str:
                        ran.append(i)
                        return "paid"

                    return create_payout("acme-supplies", 990)

            def approve_once_all_wait() -> None:
                for _ in range(workers):
                    assert waiting.acquire(timeout=60)
                [aid] = _approvals(urls[0], auditor)
                httpx.post(f"{urls[1]}/v1/approvals/{aid}/approve", json={"reason": "ok"},
                           headers={"x-api-key": approver}, timeout=30).raise_for_status()

            approving = threading.Thread(target=approve_once_all_wait)
            approving.start()
            results = _race(workers, worker)
            approving.join(60)

            assert len(ran) == 1, results
            assert results.count("paid") == 1
            refused = [r for r in results if r != "paid"]
            assert all(isinstance(r, ActionDenied) for r in refused), refused
            assert {tuple(r.result.issue_codes) for r in refused
                    if isinstance(r, ActionBlocked)} == {("APPROVAL_ALREADY_USED",)}
            assert len(_approvals(urls[0], auditor)) == 1  # nothing new for the approvers
            assert _events(url, "token.consumed") == 1
        finally:
            for s in servers:
                s.stop()


def test_a_new_check_after_the_use_is_a_new_request(tmp_path: Path) -> None:
    """The rule is about retries that name the used approval: the same action asked again
    without it is a new request and opens a new approval, as before."""
    with fresh_database("sqlite", tmp_path) as url:
        agent, approver, _ = _keys(url)
        server = _serve(url, tmp_path)
        try:
            h = {"x-api-key": agent}
            body = {**PAYOUT, "arguments": {"vendor": "acme", "amount": 5,
                                            "ref": uuid.uuid4().hex}}
            aid = httpx.post(f"{server.url}/check", json=body, headers=h,
                             timeout=30).json()["approval"]["approval_id"]
            httpx.post(f"{server.url}/v1/approvals/{aid}/approve", json={"reason": "ok"},
                       headers={"x-api-key": approver}, timeout=30).raise_for_status()
            retry = {**body, "context": {**body["context"], "approval_id": aid}}
            assert httpx.post(f"{server.url}/check", json=retry, headers=h,
                              timeout=30).json()["verdict"] == "ALLOW"
            fresh = httpx.post(f"{server.url}/check", json=body, headers=h, timeout=30).json()
            assert fresh["verdict"] == "DEFER"
            assert fresh["approval"]["approval_id"] != aid
            assert fresh["approval"]["status"] == "pending"
        finally:
            server.stop()
