"""LangGraph, end to end: a real graph (scripted fake model, in-memory checkpointer) whose tool
node asks a real Stage0 service (in process, SQLite) before any tool runs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command

from stage0.integrations.langgraph import INTERRUPT_TYPE, Stage0ToolNode
from stage0.sdk import Client, LocalEngine
from tests.service.conftest import Api, fresh_database, running_app

POLICY_VERSION = "stage0-policy-pack@1.0.0"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The service on the real clock (the node verifies execution tokens against real time)."""
    with fresh_database("sqlite", tmp_path) as url, running_app(url, frozen_time=None) as a:
        yield a


class Ledger:
    """Tools with side effects we can count."""

    def __init__(self) -> None:
        self.payouts: list[tuple[str, int]] = []
        self.searches: list[str] = []
        self.deleted: list[str] = []

    def tools(self) -> list[Any]:
        @tool
        def create_payout(vendor: str, amount: int) -> str:
            """Pay a vendor."""
            self.payouts.append((vendor, amount))
            return f"paid {vendor} {amount} EUR"

        @tool
        def search_invoices(query: str) -> str:
            """Search the invoices."""
            self.searches.append(query)
            return f"invoice 2231 matches {query!r}"

        @tool
        def delete_rows(table: str) -> str:
            """Delete the rows of a table."""
            self.deleted.append(table)
            return f"deleted {table}"

        return [create_payout, search_invoices, delete_rows]


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:8]}", "type": "tool_call"}


def build(agent: Client, ledger: Ledger, *turns: AIMessage) -> CompiledStateGraph[Any]:
    """agent -> tools -> agent … with a model that says exactly ``turns`` (then "done")."""
    model = GenericFakeChatModel(messages=iter([*turns, AIMessage(content="done")]))

    def think(state: MessagesState) -> dict[str, list[Any]]:
        return {"messages": [model.invoke(state["messages"])]}

    tools = Stage0ToolNode(
        ledger.tools(), client=agent,
        side_effects={"create_payout": ["money movement"], "delete_rows": ["delete"]},
        constraints={"create_payout": ["approval required"]},
        context=lambda tc, config: {"actor_id": "agent-7",
                                    "run_id": str(config["configurable"]["thread_id"])},
        goal="Pay the vendor invoices that are due", environment="production",
        success_criteria=["The vendor is paid"])
    builder = StateGraph(MessagesState)
    builder.add_node("agent", think)
    builder.add_node("tools", tools)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


def people(api: Api) -> tuple[Client, Client]:
    agent = Client(api_key=api.new_key(scopes=["check"], principal="agent-7"),
                   http_client=api.client)
    approver = Client(api_key=api.new_key(scopes=["approve", "audit:read"], principal="dana"),
                      http_client=api.client)
    return agent, approver


def thread() -> RunnableConfig:
    return {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}"}}


def tool_messages(state: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in state["messages"] if isinstance(m, ToolMessage)]


def consumed_tokens(api: Api) -> int:
    response = api.client.get("/v1/decisions?kind=token.consumed",
                              headers={"x-api-key": api.key})
    return len(response.json()["items"])


ASK = {"messages": [HumanMessage("Pay acme's invoice 2231")]}


def test_allow_runs_the_tool(api: Api) -> None:
    agent, _ = people(api)
    ledger = Ledger()
    turn = AIMessage(content="", tool_calls=[call("search_invoices", query="acme")])
    graph = build(agent, ledger, turn)
    state = graph.invoke(ASK, thread())
    assert "__interrupt__" not in state
    assert ledger.searches == ["acme"]
    [answer] = tool_messages(state)
    assert answer.status == "success"
    assert answer.content == "invoice 2231 matches 'acme'"
    assert state["messages"][-1].content == "done"


def test_deny_blocks_the_tool(api: Api) -> None:
    agent, _ = people(api)
    ledger = Ledger()
    turn = AIMessage(content="", tool_calls=[call("delete_rows", table="customers")])
    graph = build(agent, ledger, turn)
    state = graph.invoke(ASK, thread())
    assert ledger.deleted == []
    [answer] = tool_messages(state)
    assert answer.status == "error"
    assert answer.tool_call_id == turn.tool_calls[0]["id"]
    assert answer.artifact["verdict"] == "DENY"
    assert answer.artifact["policy_version"] == POLICY_VERSION
    assert "SIDE_EFFECTS_NEED_GUARDRAILS" in answer.artifact["issues"]
    assert answer.artifact["request_id"]
    assert answer.artifact["request_id"] in str(answer.content)
    assert "SIDE_EFFECTS_NEED_GUARDRAILS" in str(answer.content)
    assert state["messages"][-1].content == "done"  # the model saw the refusal and went on


def test_defer_interrupts_and_runs_once_approved(api: Api) -> None:
    agent, approver = people(api)
    ledger = Ledger()
    turn = AIMessage(content="", tool_calls=[call("create_payout", vendor="acme", amount=1250)])
    graph = build(agent, ledger, turn)
    config = thread()

    state = graph.invoke(ASK, config)
    [pause] = state["__interrupt__"]
    payload = pause.value
    assert payload["type"] == INTERRUPT_TYPE
    assert payload["verdict"] == "DEFER"
    assert payload["tool"] == "create_payout"
    assert payload["tool_call_id"] == turn.tool_calls[0]["id"]
    assert payload["arguments"] == {"vendor": "acme", "amount": 1250}
    assert payload["approval"]["action"]["arguments"] == {"vendor": "acme", "amount": 1250}
    assert payload["approval_status"] == "pending"
    assert payload["request_id"]
    assert payload["policy_version"] == POLICY_VERSION
    approval_id = payload["approval_id"]
    assert ledger.payouts == []
    assert graph.get_state(config).next == ("tools",)
    assert [a["approval_id"] for a in approver.approvals.list()] == [approval_id]

    # resuming before anyone approved: Stage0 still defers, so the graph pauses again
    state = graph.invoke(Command(resume={"approval_id": approval_id}), config)
    [again] = state["__interrupt__"]
    assert again.value["approval_id"] == approval_id
    assert again.value["approval_status"] == "pending"
    assert ledger.payouts == []

    decided = approver.approvals.approve(approval_id, reason="invoice matches")
    assert decided["status"] == "approved"
    state = graph.invoke(Command(resume={"approval_id": approval_id}), config)
    assert "__interrupt__" not in state
    assert ledger.payouts == [("acme", 1250)]
    [answer] = tool_messages(state)
    assert (answer.status, answer.content) == ("success", "paid acme 1250 EUR")
    assert state["messages"][-1].content == "done"
    assert consumed_tokens(api) == 1  # the ALLOW's execution token was consumed, once

    graph.invoke(Command(resume=True), config)  # nothing is waiting: nothing runs again
    assert ledger.payouts == [("acme", 1250)]


def test_a_deferred_call_holds_back_its_siblings_until_resumed(api: Api) -> None:
    """Nothing runs before every DEFER is resolved, so the resumed node does not run the
    allowed sibling a second time."""
    agent, approver = people(api)
    ledger = Ledger()
    turn = AIMessage(content="", tool_calls=[call("search_invoices", query="acme"),
                                             call("create_payout", vendor="acme", amount=90),
                                             call("delete_rows", table="invoices")])
    graph = build(agent, ledger, turn)
    config = thread()

    state = graph.invoke(ASK, config)
    approval_id = state["__interrupt__"][0].value["approval_id"]
    assert (ledger.searches, ledger.payouts, ledger.deleted) == ([], [], [])
    approver.approvals.approve(approval_id)
    state = graph.invoke(Command(resume="approved"), config)

    assert (ledger.searches, ledger.payouts, ledger.deleted) == (["acme"], [("acme", 90)], [])
    answers = tool_messages(state)
    assert [m.tool_call_id for m in answers] == [c["id"] for c in turn.tool_calls]
    assert [m.status for m in answers] == ["success", "success", "error"]
    assert consumed_tokens(api) == 1


def test_a_rejected_approval_does_not_run(api: Api) -> None:
    agent, approver = people(api)
    ledger = Ledger()
    turn = AIMessage(content="", tool_calls=[call("create_payout", vendor="acme", amount=7)])
    graph = build(agent, ledger, turn)
    config = thread()

    state = graph.invoke(ASK, config)
    approval_id = state["__interrupt__"][0].value["approval_id"]
    approver.approvals.reject(approval_id, reason="duplicate invoice")
    state = graph.invoke(Command(resume={"approval_id": approval_id}), config)

    assert ledger.payouts == []
    assert "__interrupt__" not in state
    [answer] = tool_messages(state)
    assert answer.status == "error"
    assert answer.artifact["verdict"] == "DENY"
    assert answer.artifact["issues"] == ["APPROVAL_REJECTED"]
    assert answer.artifact["approval_id"] == approval_id
    assert approval_id in str(answer.content)
    assert consumed_tokens(api) == 0


def test_the_runtime_can_give_up_on_an_approval(api: Api) -> None:
    agent, _ = people(api)
    ledger = Ledger()
    turn = AIMessage(content="", tool_calls=[call("create_payout", vendor="acme", amount=7)])
    graph = build(agent, ledger, turn)
    config = thread()
    state = graph.invoke(ASK, config)
    approval_id = state["__interrupt__"][0].value["approval_id"]

    state = graph.invoke(Command(resume=False), config)
    assert ledger.payouts == []
    [answer] = tool_messages(state)
    assert answer.status == "error"
    assert answer.artifact["verdict"] == "DEFER"
    assert answer.artifact["approval_id"] == approval_id
    assert approval_id in str(answer.content)


class RacedClient(Client):
    """Another runtime consumes every execution token just before this one does."""

    def consume_token(self, token: str, action_digest: str) -> dict[str, Any]:
        super().consume_token(token, action_digest)
        return super().consume_token(token, action_digest)


def test_a_token_consumed_elsewhere_blocks_the_tool(api: Api) -> None:
    _, approver = people(api)
    agent = RacedClient(api_key=api.new_key(scopes=["check"], principal="agent-7"),
                        http_client=api.client)
    ledger = Ledger()
    turn = AIMessage(content="", tool_calls=[call("create_payout", vendor="acme", amount=3)])
    graph = build(agent, ledger, turn)
    config = thread()
    state = graph.invoke(ASK, config)
    approver.approvals.approve(state["__interrupt__"][0].value["approval_id"])
    state = graph.invoke(Command(resume=True), config)

    assert ledger.payouts == []
    [answer] = tool_messages(state)
    assert answer.status == "error"
    assert answer.artifact["verdict"] == "DENY"
    assert answer.artifact["issues"] == ["TOKEN_ALREADY_CONSUMED"]
    assert "execution token was refused" in str(answer.content)
    assert consumed_tokens(api) == 1  # by the other runtime


def test_async_graph_pauses_and_resumes(api: Api) -> None:
    agent, approver = people(api)
    ledger = Ledger()
    turn = AIMessage(content="", tool_calls=[call("create_payout", vendor="acme", amount=5)])
    graph = build(agent, ledger, turn)
    config = thread()

    async def scenario() -> dict[str, Any]:
        state = await graph.ainvoke(ASK, config)
        approval_id = state["__interrupt__"][0].value["approval_id"]
        await asyncio.to_thread(approver.approvals.approve, approval_id)
        return await graph.ainvoke(Command(resume={"approval_id": approval_id}), config)

    state = asyncio.run(scenario())
    assert ledger.payouts == [("acme", 5)]
    assert [m.status for m in tool_messages(state)] == ["success"]


def test_with_the_local_engine() -> None:
    ledger = Ledger()
    node = Stage0ToolNode(ledger.tools(), client=LocalEngine(),
                          side_effects={"delete_rows": ["delete"]})
    turn = AIMessage(content="", tool_calls=[call("search_invoices", query="x"),
                                             call("delete_rows", table="t")])
    builder = StateGraph(MessagesState)
    builder.add_node("tools", node)
    builder.add_edge(START, "tools")
    state = builder.compile().invoke({"messages": [turn]})
    assert [m.status for m in tool_messages(state)] == ["success", "error"]
    assert (ledger.searches, ledger.deleted) == (["x"], [])


def test_the_core_package_does_not_import_langgraph() -> None:
    code = ("import sys, stage0, stage0.sdk, stage0.integrations, stage0.cli.main, "
            "stage0.app; print(sorted(m for m in sys.modules if m.startswith('lang')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
