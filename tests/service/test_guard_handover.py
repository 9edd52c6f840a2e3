"""The SDK's guard when a call is retried elsewhere with the approval it was deferred on
(``context.approval_id``, kept by a job queue, say): a rejected, expired or used approval ends
that call at once. The guard never waits for (or runs on) an approval request other than the
one the retry names. Real service, frozen clocks; each retry uses fresh client objects.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import stage0
from stage0.sdk import ActionDeferred, ActionDenied, AsyncClient, Client
from stage0.sdk.guard import build_request, enforce_async
from tests.service.conftest import fresh_database, running_app

T0 = "2026-03-17T10:00:00Z"
LATER = "2026-03-18T10:00:01Z"  # the default pack's requests expire after 24 h
PAYOUT: dict[str, Any] = {
    "tool": "payments.create_payout", "side_effects": ["money movement"],
    "constraints": ["approval required"], "environment": "production",
    "success_criteria": ["The vendor is paid"], "goal": "Pay a vendor invoice",
}


class Watched(Client):
    """The SDK's client, noting every approval it is asked to wait for."""

    waited: list[str]

    def wait_for_approval(self, approval_id: str, timeout: float = 300.0, *,
                          initial_delay: float = 0.5, max_delay: float = 10.0,
                          ) -> dict[str, Any]:
        self.waited = [*getattr(self, "waited", []), approval_id]
        return super().wait_for_approval(approval_id, timeout, initial_delay=0.05,
                                         max_delay=0.1)


def pay(client: Client, ran: list[int], approval_id: str | None = None,
        wait: float | None = None, vendor: str = "acme") -> None:
    context = {"actor_id": "agent-7", **({"approval_id": approval_id} if approval_id else {})}
    with stage0.guarded("payments.create_payout", {"vendor": vendor, "amount": 40},
                        side_effects=PAYOUT["side_effects"], constraints=PAYOUT["constraints"],
                        environment="production", success_criteria=PAYOUT["success_criteria"],
                        goal=PAYOUT["goal"], context=context, client=client,
                        wait_for_approval=wait):
        ran.append(1)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_retry_with_an_expired_approval_ends_without_waiting(backend: str,
                                                              tmp_path: Path) -> None:
    ran: list[int] = []
    with fresh_database(backend, tmp_path) as url:
        with running_app(url, frozen_time=T0) as first:
            key = first.new_key(scopes=["check"], principal="agent-7")
            with pytest.raises(ActionDeferred) as deferred:
                pay(Client(api_key=key, http_client=first.client), ran)
            assert deferred.value.approval is not None
            aid = deferred.value.approval["approval_id"]
        with running_app(url, frozen_time=LATER) as later:
            client = Watched(api_key=key, http_client=later.client)
            started = time.monotonic()
            with pytest.raises(ActionDeferred) as expired:
                pay(client, ran, approval_id=aid, wait=10)
            assert time.monotonic() - started < 5  # it did not wait for another request
            assert getattr(client, "waited", []) == []
            # nobody decided in time: recorded as expired, answered with its own code
            assert "APPROVAL_TIMED_OUT" in expired.value.result.issue_codes
            assert f"Approval `{aid}` expired at " in str(expired.value)
            assert "before it was decided (0 of 1 approvals)" in str(expired.value)

            # the async guard (and so the MCP gateway, built on it) alike
            async def retry() -> None:
                transport = httpx.ASGITransport(app=later.client.app)
                async with httpx.AsyncClient(transport=transport,
                                             base_url="http://stage0.test") as http:
                    body = build_request(
                        "payments.create_payout", {"vendor": "acme", "amount": 40},
                        goal=PAYOUT["goal"], side_effects=PAYOUT["side_effects"],
                        constraints=PAYOUT["constraints"],
                        context={"actor_id": "agent-7", "approval_id": aid},
                        success_criteria=PAYOUT["success_criteria"], environment="production")
                    await asyncio.wait_for(enforce_async(
                        AsyncClient(api_key=key, http_client=http), body, 30), 5)

            with pytest.raises(ActionDeferred) as async_expired:
                asyncio.run(retry())
            assert "APPROVAL_TIMED_OUT" in async_expired.value.result.issue_codes
    assert ran == []


def test_a_retry_with_a_rejected_or_used_approval_is_denied(tmp_path: Path) -> None:
    ran: list[int] = []
    with fresh_database("sqlite", tmp_path) as url, running_app(url, frozen_time=None) as api:
        key = api.new_key(scopes=["check"], principal="agent-7")
        approver = Client(api_key=api.new_key(scopes=["approve"], principal="dana"),
                          http_client=api.client)
        with pytest.raises(ActionDeferred) as deferred:
            pay(Client(api_key=key, http_client=api.client), ran)
        assert deferred.value.approval is not None
        aid = deferred.value.approval["approval_id"]
        approver.approvals.approve(aid)
        pay(Watched(api_key=key, http_client=api.client), ran, approval_id=aid, wait=10)
        assert ran == [1]
        with pytest.raises(ActionDenied) as used:
            pay(Watched(api_key=key, http_client=api.client), ran, approval_id=aid, wait=10)
        assert used.value.result.issue_codes == ["APPROVAL_ALREADY_USED"]

        with pytest.raises(ActionDeferred) as second:
            pay(Client(api_key=key, http_client=api.client), ran, vendor="globex")
        assert second.value.approval is not None
        other = second.value.approval["approval_id"]
        approver.approvals.reject(other, reason="no")
        with pytest.raises(ActionDenied) as rejected:
            pay(Watched(api_key=key, http_client=api.client), ran, approval_id=other, wait=10,
                vendor="globex")
        assert rejected.value.result.issue_codes == ["APPROVAL_REJECTED"]
        assert ran == [1]
        assert len(approver.approvals.list(status=None)) == 2  # one per action, no more
