"""The OpenAI Agents SDK adapter after a hand-over: a ``RunState`` serialised to JSON and
resumed by fresh agent objects, or in another process. An approval that was rejected, expired
or used there ends the call, once, with that outcome; it never opens a new approval request
and interrupts the run again.

The SDK is real (``Runner``, ``RunState.to_string``/``from_string``), the model is scripted
(``tests/integrations/openai_agents_handover.py``), tracing is off, and Stage0 is a real
service: in process for the frozen-clock cases, ``stage0 serve`` for the cross-process one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import agents
import httpx
import pytest
from agents import RunState

from stage0.sdk import Client
from stage0.store import Store
from stage0.store.keys import create_key
from tests.integrations import openai_agents_handover as handover
from tests.service.conftest import Api, fresh_database, running_app, start_server

REPO = Path(__file__).resolve().parents[2]
T0 = "2026-03-17T10:00:00Z"
LATER = "2026-03-18T10:00:01Z"  # the default pack's requests expire after 24 h


@pytest.fixture(autouse=True)
def no_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    agents.set_tracing_disabled(True)
    yield
    agents.set_tracing_disabled(False)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with fresh_database("sqlite", tmp_path) as url, running_app(url, frozen_time=None) as a:
        yield a


def people(api: Api) -> tuple[Client, Client]:
    agent = Client(api_key=api.new_key(scopes=["check"], principal="agent-7"),
                   http_client=api.client)
    approver = Client(api_key=api.new_key(scopes=["approve", "audit:read"], principal="dana"),
                      http_client=api.client)
    return agent, approver


def payouts(folder: Path) -> list[str]:
    path = folder / "payouts"
    return path.read_text().splitlines() if path.exists() else []


def every_approval(approver: Client) -> list[dict[str, Any]]:
    return approver.approvals.list(status=None)


def test_a_rejection_ends_the_call_after_a_hand_over_to_another_process(
        tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url:
        store = Store(url)
        store.migrate()
        agent_key = create_key(store, tenant="default", name="agent", scopes=["check"],
                               principal="agent-7", plan="pro", unlimited=True)[1]
        approver_key = create_key(store, tenant="default", name="dana",
                                  scopes=["approve", "audit:read"], principal="dana",
                                  plan="pro", unlimited=True)[1]
        store.dispose()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            server = start_server(url, tmp_path)

        def phase(name: str) -> Any:
            done = subprocess.run(
                [sys.executable, "-m", "tests.integrations.openai_agents_handover", name,
                 str(tmp_path), server.url, agent_key],
                capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
                env={k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"})
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout.strip().splitlines()[-1])

        try:
            assert phase("start") == {"interruptions": [handover.CALL_ID]}
            h = {"x-api-key": approver_key}
            [approval] = httpx.get(f"{server.url}/v1/approvals", headers=h,
                                   timeout=30).json()["items"]
            aid = approval["approval_id"]
            httpx.post(f"{server.url}/v1/approvals/{aid}/reject", headers=h, timeout=30,
                       json={"reason": "duplicate invoice"}).raise_for_status()

            out = phase("resume")
            assert out["still_open"] == []
            [output] = out["tool_outputs"]
            assert json.loads(output)["error"] == "stage0_approval_rejected"
            assert json.loads(output)["approval_id"] == aid
            assert out["final_output"] == "Done with invoice 2231."
            assert payouts(tmp_path) == []
            listed = httpx.get(f"{server.url}/v1/approvals", headers=h, timeout=30,
                               params={"limit": 500}).json()["items"]
            assert [a["approval_id"] for a in listed] == [aid]  # nothing new to approve
        finally:
            server.stop()


def test_an_expired_approval_ends_the_call_after_a_hand_over(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url:
        with running_app(url, frozen_time=T0) as first:
            agent, approver = people(first)
            asyncio.run(handover.start(agent, tmp_path))
            [approval] = every_approval(approver)
            keys = agent.api_key, approver.api_key
        with running_app(url, frozen_time=LATER) as later:
            agent = Client(api_key=keys[0], http_client=later.client)
            approver = Client(api_key=keys[1], http_client=later.client)
            out = asyncio.run(handover.resume(agent, tmp_path))
            listed = every_approval(approver)
    assert out["still_open"] == []
    [output] = out["tool_outputs"]
    assert json.loads(output)["error"] == "stage0_approval_expired"
    assert json.loads(output)["approval_id"] == approval["approval_id"]
    assert payouts(tmp_path) == []
    assert [a["approval_id"] for a in listed] == [approval["approval_id"]]


def test_an_approval_used_by_another_run_ends_the_call_after_a_hand_over(
        api: Api, tmp_path: Path) -> None:
    """Two runs defer the same action (so wait on the same approval); the other run is
    approved and pays; the handed-over run then ends with ``stage0_approval_used``."""
    agent, approver = people(api)
    asyncio.run(handover.start(agent, tmp_path, "call_first"))
    asyncio.run(handover.start(agent, tmp_path, "call_second"))
    [approval] = every_approval(approver)
    approver.approvals.approve(approval["approval_id"], reason="invoice matches")
    paid = asyncio.run(handover.resume(agent, tmp_path, "call_second"))
    assert paid["tool_outputs"] == ["paid 1250 to acme"]

    out = asyncio.run(handover.resume(agent, tmp_path, "call_first"))
    assert out["still_open"] == []
    [output] = out["tool_outputs"]
    assert json.loads(output)["error"] == "stage0_approval_used"
    assert payouts(tmp_path) == ["acme 1250"]
    assert [a["approval_id"] for a in every_approval(approver)] == [approval["approval_id"]]


def test_a_hand_over_approved_in_the_sdk_alone_rechecks_the_first_approval(
        api: Api, tmp_path: Path) -> None:
    """Without ``resolve_approvals``: the handed-over run is approved in the SDK only, so the
    tool call itself checks again — with the approval of the call's first decision, which was
    rejected, so it is denied (``APPROVAL_REJECTED``), not deferred on a new request."""
    agent, approver = people(api)
    asyncio.run(handover.start(agent, tmp_path))
    [approval] = every_approval(approver)
    approver.approvals.reject(approval["approval_id"], reason="no")

    model = handover.ScriptedModel([handover.say("Not paid.")])
    fresh = handover.agent(agent, tmp_path, model)
    state = asyncio.run(RunState.from_string(
        fresh, (tmp_path / f"state-{handover.CALL_ID}.json").read_text()))
    [item] = state.get_interruptions()
    state.approve(item)
    result = asyncio.run(agents.Runner.run(fresh, state, run_config=handover.RUN))
    assert result.final_output == "Not paid."
    [output] = model.tool_outputs()
    refusal = json.loads(output)
    assert (refusal["error"], refusal["verdict"]) == ("stage0_denied", "DENY")
    assert refusal["issues"] == ["APPROVAL_REJECTED"]
    assert refusal["approval_id"] == approval["approval_id"]
    assert payouts(tmp_path) == []
    assert len(every_approval(approver)) == 1
