"""A LangGraph payout graph whose checkpoints live on disk, so that one process can start a run
and another (or fresh objects in the same process) can resume it.

The checkpointer is LangGraph's own ``InMemorySaver`` over its ``PersistentDict`` (pickled to
files when the saver closes, loaded when one opens). Run as a script, each phase is a process:

    python -m tests.integrations.langgraph_handover start|resume FOLDER BASE_URL API_KEY THREAD

``start`` runs until the graph pauses and prints the interrupt payloads; ``resume`` resumes with
``Command(resume=True)`` and prints the tool messages. Payouts that really ran are appended to
``FOLDER/payouts``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver, PersistentDict
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import tools_condition
from langgraph.types import Command

from stage0.integrations.langgraph import Stage0ToolNode
from stage0.sdk import Client

CALL = {"name": "create_payout", "args": {"vendor": "acme", "amount": 1250},
        "id": "call_handover_1", "type": "tool_call"}
ASK = {"messages": [HumanMessage("Pay acme's invoice 2231")]}


def saver_on_disk(folder: Path) -> InMemorySaver:
    """LangGraph's in-memory checkpointer whose three tables are ``PersistentDict`` files in
    ``folder``: loaded now, written when the saver is closed (``with saver: ...``)."""
    names = iter(("storage", "writes", "blobs"))

    class OnDisk(PersistentDict):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args, filename=str(folder / next(names)))
            if Path(self.filename).exists():
                self.load()

    return InMemorySaver(factory=OnDisk)


def build(client: Client, folder: Path, saver: InMemorySaver, *,
          turns: list[AIMessage]) -> CompiledStateGraph[Any]:
    """agent -> tools -> agent, the model saying ``turns``; the payout tool records itself in
    ``folder/payouts``."""
    model = GenericFakeChatModel(messages=iter(turns))

    @tool
    def create_payout(vendor: str, amount: int) -> str:
        """Pay a vendor."""
        with (folder / "payouts").open("a") as out:
            out.write(f"{vendor} {amount}\n")
        return f"paid {vendor} {amount} EUR"

    def think(state: MessagesState) -> dict[str, list[Any]]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", think)
    builder.add_node("tools", Stage0ToolNode(
        [create_payout], client=client, side_effects={"create_payout": ["money movement"]},
        constraints={"create_payout": ["approval required"]},
        context={"actor_id": "agent-7"}, goal="Pay the vendor invoices that are due",
        environment="production", success_criteria=["The vendor is paid"]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=saver)


def config(thread: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread}}


def start(client: Client, folder: Path, thread: str) -> list[dict[str, Any]]:
    """The first run, up to the pause: the interrupt payloads."""
    with saver_on_disk(folder) as saver:
        graph = build(client, folder, saver,
                      turns=[AIMessage("", tool_calls=[CALL]), AIMessage("done")])
        state = graph.invoke(ASK, config(thread))
    return [i.value for i in state.get("__interrupt__", [])]


def resume(client: Client, folder: Path, thread: str, value: Any = True) -> dict[str, Any]:
    """Resume with ``Command(resume=value)``: the tool messages and any new interrupts."""
    with saver_on_disk(folder) as saver:
        graph = build(client, folder, saver, turns=[AIMessage("done")])
        state = graph.invoke(Command(resume=value), config(thread))
    return {
        "tool_messages": [{"status": m.status, "content": str(m.content), "artifact": m.artifact}
                          for m in state["messages"] if isinstance(m, ToolMessage)],
        "interrupts": [i.value for i in state.get("__interrupt__", [])],
    }


def main(argv: list[str]) -> None:
    phase, folder, base_url, key, thread = argv
    with Client(base_url, key, timeout=30) as client:
        if phase == "start":
            out: Any = start(client, Path(folder), thread)
        else:
            out = resume(client, Path(folder), thread)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
