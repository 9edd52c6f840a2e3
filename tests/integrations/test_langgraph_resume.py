"""LangGraph: an approval that was rejected, expired or used ends the deferred call, once —
in the same process, with fresh graph objects, and in another process.

The graphs are real (scripted fake model), their checkpoints live on disk in LangGraph's own
``InMemorySaver`` over ``PersistentDict`` (``tests/integrations/langgraph_handover.py``), and
Stage0 is a real service: in process for the frozen-clock cases, ``stage0 serve`` for the
cross-process one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command

from stage0.integrations.langgraph import Stage0ToolNode
from stage0.sdk import Client
from stage0.store import Store
from stage0.store.keys import create_key
from tests.integrations import langgraph_handover as handover
from tests.service.conftest import Api, fresh_database, running_app, start_server

REPO = Path(__file__).resolve().parents[2]
T0 = "2026-03-17T10:00:00Z"
LATER = "2026-03-18T10:00:01Z"  # the default pack's requests expire after 24 h


def people(api: Api) -> tuple[Client, Client]:
    agent = Client(api_key=api.new_key(scopes=["check"], principal="agent-7"),
                   http_client=api.client)
    approver = Client(api_key=api.new_key(scopes=["approve", "audit:read"], principal="dana"),
                      http_client=api.client)
    return agent, approver


def every_approval(approver: Client) -> list[str]:
    return [a["approval_id"] for a in approver.approvals.list(status=None)]


def payouts(folder: Path) -> list[str]:
    path = folder / "payouts"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with fresh_database("sqlite", tmp_path) as url, running_app(url, frozen_time=None) as a:
        yield a


def test_resume_true_after_a_rejection_ends_the_call(api: Api, tmp_path: Path) -> None:
    """The issue's case: rejected in Stage0, then ``Command(resume=True)``. Fresh graph objects
    resume it from the checkpoint on disk."""
    agent, approver = people(api)
    thread = f"t-{uuid.uuid4().hex[:8]}"
    [pause] = handover.start(agent, tmp_path, thread)
    aid = pause["approval_id"]
    approver.approvals.reject(aid, reason="duplicate invoice")

    out = handover.resume(agent, tmp_path, thread)
    assert out["interrupts"] == []
    [message] = out["tool_messages"]
    assert message["status"] == "error"
    assert (message["artifact"]["verdict"], message["artifact"]["issues"]) == (
        "DENY", ["APPROVAL_REJECTED"])
    assert message["artifact"]["approval_id"] == aid
    assert payouts(tmp_path) == []
    assert every_approval(approver) == [aid]  # no new request for the approvers


def test_a_rejection_ends_the_call_in_another_process(tmp_path: Path) -> None:
    """Two processes share nothing but the checkpoint files and a ``stage0 serve``: the first
    pauses the graph, the approver rejects, the second resumes with ``Command(resume=True)``
    and gets the ``APPROVAL_REJECTED`` ToolMessage; the payout never runs."""
    with fresh_database("sqlite", tmp_path) as url:
        store = Store(url)
        store.migrate()
        agent = create_key(store, tenant="default", name="agent", scopes=["check"],
                           principal="agent-7", plan="pro", unlimited=True)[1]
        approver = create_key(store, tenant="default", name="dana",
                              scopes=["approve", "audit:read"], principal="dana", plan="pro",
                              unlimited=True)[1]
        store.dispose()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            server = start_server(url, tmp_path)
        folder = tmp_path / "checkpoints"
        folder.mkdir()
        thread = f"t-{uuid.uuid4().hex[:8]}"

        def phase(name: str) -> Any:
            done = subprocess.run(
                [sys.executable, "-m", "tests.integrations.langgraph_handover", name,
                 str(folder), server.url, agent, thread],
                capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout.strip().splitlines()[-1])

        try:
            [pause] = phase("start")
            aid = pause["approval_id"]
            h = {"x-api-key": approver}
            httpx.post(f"{server.url}/v1/approvals/{aid}/reject", headers=h, timeout=30,
                       json={"reason": "duplicate invoice"}).raise_for_status()
            out = phase("resume")
            assert out["interrupts"] == []
            [message] = out["tool_messages"]
            assert message["artifact"]["issues"] == ["APPROVAL_REJECTED"]
            assert message["artifact"]["approval_id"] == aid
            assert payouts(folder) == []
            listed = httpx.get(f"{server.url}/v1/approvals", headers=h, timeout=30).json()
            assert [a["approval_id"] for a in listed["items"]] == [aid]
        finally:
            server.stop()


def test_an_expired_approval_ends_the_call(tmp_path: Path) -> None:
    """Paused at T0, resumed with fresh objects after the request expired undecided: the call
    ends with ``APPROVAL_TIMED_OUT`` for the approval the interrupt showed, instead of pausing
    again on the new request Stage0 opens for the action."""
    thread = f"t-{uuid.uuid4().hex[:8]}"
    with fresh_database("sqlite", tmp_path) as url:
        with running_app(url, frozen_time=T0) as first:
            agent, approver = people(first)
            [pause] = handover.start(agent, tmp_path, thread)
            aid = pause["approval_id"]
            keys = agent.api_key, approver.api_key
        with running_app(url, frozen_time=LATER) as later:
            agent = Client(api_key=keys[0], http_client=later.client)
            out = handover.resume(agent, tmp_path, thread)
    assert out["interrupts"] == []
    [message] = out["tool_messages"]
    assert message["status"] == "error"
    assert message["artifact"]["verdict"] == "DEFER"
    assert "APPROVAL_TIMED_OUT" in message["artifact"]["issues"]
    assert message["artifact"]["approval_id"] == aid
    assert f"approval `{aid}` can no longer be used" in message["content"]
    assert payouts(tmp_path) == []


def test_an_approval_used_by_another_run_ends_the_call(api: Api, tmp_path: Path) -> None:
    """Two runs pause on the same action, so on the same approval; once it is granted, the
    first resumed runs the payout and the other ends with ``APPROVAL_ALREADY_USED``, without a
    new request for the approvers."""
    agent, approver = people(api)
    first, second = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    [one] = handover.start(agent, tmp_path, first)
    [two] = handover.start(agent, tmp_path, second)
    assert one["approval_id"] == two["approval_id"]
    aid = one["approval_id"]
    approver.approvals.approve(aid, reason="invoice matches")

    ran = handover.resume(agent, tmp_path, first)
    assert [m["status"] for m in ran["tool_messages"]] == ["success"]
    late = handover.resume(agent, tmp_path, second)
    assert late["interrupts"] == []
    [message] = late["tool_messages"]
    assert (message["artifact"]["verdict"], message["artifact"]["issues"]) == (
        "DENY", ["APPROVAL_ALREADY_USED"])
    assert payouts(tmp_path) == ["acme 1250"]
    assert every_approval(approver) == [aid]


def test_resuming_replays_the_decisions_instead_of_asking_again(api: Api,
                                                                tmp_path: Path) -> None:
    """The node's checks are LangGraph tasks: a resume while the approval is still pending asks
    Stage0 once (the re-check with the approval id), not once more per call."""
    agent, approver = people(api)
    thread = f"t-{uuid.uuid4().hex[:8]}"
    [pause] = handover.start(agent, tmp_path, thread)

    def decisions() -> int:
        response = api.client.get("/v1/decisions", params={"kind": "decision"},
                                  headers={"x-api-key": api.key})
        return len(response.json()["items"])

    assert decisions() == 1
    with handover.saver_on_disk(tmp_path) as saver:
        graph = handover.build(agent, tmp_path, saver, turns=[AIMessage("done")])
        state = graph.invoke(Command(resume=True), handover.config(thread))
    [again] = state["__interrupt__"]
    assert again.value["approval_id"] == pause["approval_id"]
    assert again.value["approval_status"] == "pending"
    assert decisions() == 2  # the re-check with the id; the first check was replayed
    approver.approvals.approve(pause["approval_id"])
    out = handover.resume(agent, tmp_path, thread)
    assert [m["status"] for m in out["tool_messages"]] == ["success"]
    assert payouts(tmp_path) == ["acme 1250"]


def test_a_replayed_allow_gets_a_fresh_token(api: Api, tmp_path: Path) -> None:
    """A call allowed on a caller-asserted approval sits next to a deferred one. On resume its
    ALLOW is replayed, but its token was signed back then (and may have expired while the
    human decided): the node asks Stage0 again for that call and consumes the new token."""
    agent, approver = people(api)
    ran: list[int] = []

    @tool
    def create_payout(vendor: str, amount: int) -> str:
        """Pay a vendor."""
        ran.append(amount)
        return f"paid {vendor} {amount} EUR"

    def context(call: Any, config: Any) -> dict[str, Any]:
        asserted = {"approval_status": "approved"} if call["args"]["amount"] == 1 else {}
        return {"actor_id": "agent-7", **asserted}

    turn = AIMessage("", tool_calls=[
        {"name": "create_payout", "args": {"vendor": "acme", "amount": 1}, "id": "call_a",
         "type": "tool_call"},
        {"name": "create_payout", "args": {"vendor": "acme", "amount": 2}, "id": "call_b",
         "type": "tool_call"}])
    model = GenericFakeChatModel(messages=iter([turn, AIMessage("done")]))
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("tools", Stage0ToolNode(
        [create_payout], client=agent, side_effects={"create_payout": ["money movement"]},
        constraints={"create_payout": ["approval required"]}, context=context,
        environment="production", success_criteria=["The vendor is paid"]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    graph = builder.compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}

    [pause] = graph.invoke({"messages": [HumanMessage("pay")]}, config)["__interrupt__"]
    approver.approvals.approve(pause.value["approval_id"])
    graph.invoke(Command(resume=True), config)
    assert sorted(ran) == [1, 2]

    items = api.client.get("/v1/decisions", params={"kind": "decision"},
                           headers={"x-api-key": api.key}).json()["items"]
    # call a: ALLOW, then ALLOW again on resume; call b: DEFER, then ALLOW with the approval
    assert sorted(d["verdict"] for d in items) == ["ALLOW", "ALLOW", "ALLOW", "DEFER"]
    consumed = api.client.get("/v1/decisions", params={"kind": "token.consumed"},
                              headers={"x-api-key": api.key}).json()["items"]
    assert len(consumed) == 2
