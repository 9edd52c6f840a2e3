"""An OpenAI Agents SDK payout agent whose run is handed over between processes: one process
runs it until Stage0 defers the payout and saves ``RunState.to_string()``; another loads it
into fresh agent objects (``RunState.from_string``), mirrors Stage0's decision with
``resolve_approvals`` and resumes it. The model is scripted (no network, no tracing).

    python -m tests.integrations.openai_agents_handover start|resume FOLDER BASE_URL API_KEY

Each phase prints one JSON line; payouts that really ran are appended to ``FOLDER/payouts``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agents import (
    Agent,
    FunctionTool,
    Model,
    ModelResponse,
    ModelSettings,
    RunConfig,
    Runner,
    RunState,
    Usage,
    set_tracing_disabled,
)
from agents.models.interface import ModelTracing
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from stage0.integrations.openai_agents import resolve_approvals, stage0_function_tool
from stage0.sdk import AsyncClient, Client

RUN = RunConfig(tracing_disabled=True)
CALL_ID = "call_handover_7f3a"


class ScriptedModel(Model):
    """Answers each model call with the next scripted turn; records what it was sent."""

    def __init__(self, *turns: list[Any]) -> None:
        self.turns = list(turns)
        self.inputs: list[list[Any]] = []

    async def get_response(self, system_instructions: str | None,
                           input: str | list[Any], model_settings: ModelSettings,
                           tools: list[Any], output_schema: Any, handoffs: list[Any],
                           tracing: ModelTracing, **kwargs: Any) -> ModelResponse:
        self.inputs.append([input] if isinstance(input, str) else list(input))
        assert self.turns, "the model was called more often than scripted"
        return ModelResponse(output=self.turns.pop(0), usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError

    def tool_outputs(self) -> list[str]:
        return [str(item["output"]) for turn in self.inputs for item in turn
                if isinstance(item, dict) and item.get("type") == "function_call_output"]


def payout_call(call_id: str = CALL_ID) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        id=f"fc_{call_id}", call_id=call_id, type="function_call", name="create_payout",
        arguments=json.dumps({"vendor": "acme", "amount": 1250}), status="completed")


def say(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id="msg_1", type="message", role="assistant", status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])])


def payout_tool(client: Client | AsyncClient, folder: Path) -> FunctionTool:
    @stage0_function_tool(client=client, tool="payments.create_payout",
                          side_effects=["money movement"], constraints=["approval required"],
                          environment="production", success_criteria=["The vendor is paid"],
                          goal="Pay a vendor invoice")
    def create_payout(vendor: str, amount: int) -> str:
        """Pay a vendor."""
        with (folder / "payouts").open("a") as out:
            out.write(f"{vendor} {amount}\n")
        return f"paid {amount} to {vendor}"

    return create_payout


def agent(client: Client | AsyncClient, folder: Path, model: ScriptedModel) -> Agent[Any]:
    return Agent(name="payments", model=model, tools=[payout_tool(client, folder)])


async def start(client: Client | AsyncClient, folder: Path,
                call_id: str = CALL_ID) -> dict[str, Any]:
    """Run until Stage0 defers the payout; the saved run state and the interruptions."""
    result = await Runner.run(agent(client, folder, ScriptedModel([payout_call(call_id)])),
                              "pay invoice 2231", run_config=RUN)
    saved = result.to_state().to_string()
    (folder / f"state-{call_id}.json").write_text(saved)
    return {"interruptions": [i.call_id for i in result.interruptions]}


async def resume(client: Client | AsyncClient, folder: Path,
                 call_id: str = CALL_ID) -> dict[str, Any]:
    """Load the run state into fresh objects, mirror Stage0's decision, resume."""
    model = ScriptedModel([say("Done with invoice 2231.")])
    fresh = agent(client, folder, model)
    state = await RunState.from_string(fresh, (folder / f"state-{call_id}.json").read_text())
    still_open = await resolve_approvals(state)
    if still_open:
        return {"still_open": [i.call_id for i in still_open], "tool_outputs": []}
    result = await Runner.run(fresh, state, run_config=RUN)
    return {"still_open": [], "final_output": result.final_output,
            "tool_outputs": model.tool_outputs()}


def main(argv: list[str]) -> None:
    phase, folder, base_url, key = argv
    set_tracing_disabled(True)
    with Client(base_url, key, timeout=30) as client:
        run = start if phase == "start" else resume
        print(json.dumps(asyncio.run(run(client, Path(folder)))))


if __name__ == "__main__":
    main(sys.argv[1:])
