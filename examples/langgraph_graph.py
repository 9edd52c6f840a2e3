"""A LangGraph agent whose payout tool runs only when Stage0 allows it.

Needs a running Stage0 (``stage0 serve``), an agent key and the optional dependencies
(``pip install 'stage0-authz[langgraph]'``)::

    stage0 keys create --tenant default --name agent --scopes check --principal agent-7
    export STAGE0_API_BASE=http://127.0.0.1:8000 STAGE0_API_KEY=<the agent key>
    python examples/langgraph_graph.py

The model is scripted (no LLM account needed): it asks to pay invoice 2231. Stage0 defers the
payout for an approval, the graph pauses (``interrupt``) and prints the approval id; approve it
from another shell with an approver key (``--scopes approve --principal dana``)::

    stage0 approvals approve apr_… --key <the approver key> --reason "invoice checked"

The example waits for the decision, resumes the graph with ``Command(resume=...)`` and the
payout runs, once, after its execution token was consumed.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command

from stage0.integrations.langgraph import Stage0ToolNode
from stage0.sdk import Client, StageZeroError


@tool
def create_payout(vendor: str, amount: int, currency: str = "EUR") -> str:
    """Release a manual payout to a vendor."""
    return f"paid {amount} {currency} to {vendor}"  # the real payment call goes here


@tool
def find_invoice(number: int) -> str:
    """Look an invoice up (read-only)."""
    return f"invoice {number}: acme-supplies, 1250 EUR, due today"


def build_graph(client: Client) -> CompiledStateGraph[Any]:
    script = [
        AIMessage(content="", tool_calls=[
            {"name": "find_invoice", "args": {"number": 2231}, "id": "call_find",
             "type": "tool_call"},
            {"name": "create_payout", "args": {"vendor": "acme-supplies", "amount": 1250},
             "id": "call_pay", "type": "tool_call"},
        ]),
        AIMessage(content="Invoice 2231 is paid."),
    ]
    model = GenericFakeChatModel(messages=iter(script))

    def agent(state: MessagesState) -> dict[str, list[Any]]:
        return {"messages": [model.invoke(state["messages"])]}

    tools = Stage0ToolNode(
        [create_payout, find_invoice], client=client,
        side_effects={"create_payout": ["money movement"]},
        constraints={"create_payout": ["approval required"]},
        context={"actor_id": "agent-7"}, environment="production",
        goal="Release the manual payout for invoice 2231",
        success_criteria=["The vendor is paid exactly once"],
    )
    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", tools)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


def main() -> int:
    client = Client()  # STAGE0_API_BASE, STAGE0_API_KEY
    graph = build_graph(client)
    config: RunnableConfig = {"configurable": {"thread_id": f"payout-{uuid.uuid4().hex[:8]}"}}
    state = graph.invoke({"messages": [HumanMessage("Pay invoice 2231")]}, config)
    while "__interrupt__" in state:
        pending = state["__interrupt__"][0].value
        approval_id = pending["approval_id"]
        print(f"{pending['tool']}({pending['arguments']}) needs approval {approval_id} "
              f"[{', '.join(pending['issues'])}]; approve it with:\n"
              f"  stage0 approvals approve {approval_id} --key <approver key>")
        try:
            decided = client.wait_for_approval(approval_id, timeout=600)
        except StageZeroError as exc:
            print(f"gave up: {exc}", file=sys.stderr)
            return 1
        print(f"approval {approval_id}: {decided['status']}")
        state = graph.invoke(Command(resume={"approval_id": approval_id}), config)
    for message in state["messages"]:
        if isinstance(message, ToolMessage):
            print(f"{message.name}: [{message.status}] {message.content}")
    print(state["messages"][-1].content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
