"""The OpenAI Agents SDK adapter, end to end: the real ``Runner`` with a scripted model (no
network, no tracing) against a real Stage0 service in process.

ALLOW runs the tool; DENY blocks it and the model sees the refusal; DEFER stops the run with an
approval interruption, an approver grants the Stage0 approval, the run resumes and the tool
runs exactly once, its execution token consumed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import agents
import httpx
import pytest
from agents import (
    Agent,
    FunctionTool,
    Model,
    ModelResponse,
    ModelSettings,
    RunConfig,
    Runner,
    RunResult,
    RunState,
    TracingProcessor,
    Usage,
    function_tool,
)
from agents.models.interface import ModelTracing
from agents.tracing.processors import default_processor
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from stage0 import AsyncClient, Client
from stage0.integrations.openai_agents import (
    resolve_approvals,
    stage0_approval,
    stage0_function_tool,
    stage0_needs_approval,
)
from tests.service.conftest import Api, fresh_database, running_app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openai_agents_agent.py"
PAYOUT = {"tool": "payments.create_payout", "side_effects": ["money movement"],
          "constraints": ["approval required"], "environment": "production",
          "success_criteria": ["The vendor is paid"], "goal": "Pay a vendor invoice"}
RUN = RunConfig(tracing_disabled=True)


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
        """The tool outputs the model was shown, in order."""
        return [str(item["output"]) for turn in self.inputs for item in turn
                if isinstance(item, dict) and item.get("type") == "function_call_output"]


def call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(id=f"fc_{call_id}", call_id=call_id, type="function_call",
                                    name=name, arguments=json.dumps(arguments),
                                    status="completed")


def say(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id="msg_1", type="message", role="assistant", status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])])


class NoTraces(TracingProcessor):
    """Stands in for the SDK's exporter; records anything that would have been traced."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def on_trace_start(self, trace: Any) -> None:
        self.seen.append(trace)

    def on_trace_end(self, trace: Any) -> None:
        self.seen.append(trace)

    def on_span_start(self, span: Any) -> None:
        self.seen.append(span)

    def on_span_end(self, span: Any) -> None:
        self.seen.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OpenAI key, no tracing (nothing reaches a trace processor; the exporter is swapped
    out), and any attempt to open a network connection fails."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    traces = NoTraces()
    agents.set_trace_processors([traces])
    agents.set_tracing_disabled(True)
    yield
    agents.set_tracing_disabled(False)
    agents.set_trace_processors([default_processor()])
    assert traces.seen == []


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The service on SQLite, on the real clock (execution tokens are checked against it)."""
    with fresh_database("sqlite", tmp_path) as url, running_app(url, frozen_time=None) as a:
        yield a


def people(api: Api) -> tuple[Client, Client]:
    agent = Client(api_key=api.new_key(scopes=["check"], principal="agent-7"),
                   http_client=api.client)
    approver = Client(api_key=api.new_key(scopes=["approve", "audit:read"], principal="dana"),
                      http_client=api.client)
    return agent, approver


def consumed_tokens(api: Api) -> int:
    response = api.client.get("/v1/decisions?kind=token.consumed",
                              headers={"x-api-key": api.key})
    return len(response.json()["items"])


def verdicts(api: Api, tool: str) -> list[str]:
    """The verdicts Stage0 logged for a tool, oldest first: one per /check."""
    response = api.client.get("/v1/decisions", params={"tool": tool},
                              headers={"x-api-key": api.key})
    return [d["verdict"] for d in reversed(response.json()["items"])]


def payout_tool(client: Client | AsyncClient, paid: list[tuple[str, int]]) -> FunctionTool:
    @stage0_function_tool(client=client, **PAYOUT)
    def create_payout(vendor: str, amount: int) -> str:
        """Pay a vendor."""
        paid.append((vendor, amount))
        return f"paid {amount} to {vendor}"

    return create_payout


def run(agent: Agent[Any], start: str | RunState[Any]) -> RunResult:
    return asyncio.run(Runner.run(agent, start, run_config=RUN))


def test_allow_runs_the_tool(api: Api) -> None:
    client, _ = people(api)
    searched: list[str] = []

    @stage0_function_tool(client=client, tool="tickets.search", success_criteria=["found"])
    def search_tickets(query: str) -> str:
        """Search support tickets."""
        searched.append(query)
        return "ticket 1042: refund requested"

    model = ScriptedModel([call("search_tickets", {"query": "refund"})], [say("Found 1042.")])
    result = run(Agent(name="support", model=model, tools=[search_tickets]), "find refunds")
    assert result.interruptions == []
    assert searched == ["refund"]
    assert model.tool_outputs() == ["ticket 1042: refund requested"]
    assert result.final_output == "Found 1042."
    assert verdicts(api, "tickets.search") == ["ALLOW"]  # one check, reused by the call


def test_deny_blocks_the_tool_and_tells_the_model(api: Api) -> None:
    client, _ = people(api)
    deleted: list[str] = []

    @stage0_function_tool(client=client, tool="db.delete_rows", side_effects=["delete"])
    def delete_rows(table: str) -> str:
        """Delete every row of a table."""
        deleted.append(table)
        return "deleted"

    model = ScriptedModel([call("delete_rows", {"table": "customers"})],
                          [say("I was not allowed to delete.")])
    result = run(Agent(name="ops", model=model, tools=[delete_rows]), "clean up customers")
    assert deleted == []
    assert result.interruptions == []
    assert result.final_output == "I was not allowed to delete."
    [output] = model.tool_outputs()
    refusal = json.loads(output)
    assert refusal["error"] == "stage0_denied"
    assert (refusal["verdict"], refusal["tool"]) == ("DENY", "db.delete_rows")
    assert refusal["request_id"]
    assert refusal["policy_version"] == "stage0-policy-pack@1.0.0"
    assert "SIDE_EFFECTS_NEED_GUARDRAILS" in refusal["issues"]
    assert verdicts(api, "db.delete_rows") == ["DENY"]


def test_defer_interrupts_and_resumes_once_approved(api: Api) -> None:
    client, approver = people(api)
    paid: list[tuple[str, int]] = []
    model = ScriptedModel([call("create_payout", {"vendor": "acme", "amount": 1250})],
                          [say("Paid acme.")])
    agent = Agent(name="payments", model=model, tools=[payout_tool(client, paid)])

    result = run(agent, "pay invoice 2231")
    assert paid == []
    assert result.final_output is None
    [item] = result.interruptions
    assert item.tool_name == "create_payout"
    approval = asyncio.run(stage0_approval(item))
    assert approval is not None
    assert approval["status"] == "pending"
    assert approval["action"]["arguments"] == {"vendor": "acme", "amount": 1250}
    assert [a["approval_id"] for a in approver.approvals.list()] == [approval["approval_id"]]

    state = result.to_state()
    assert [i.call_id for i in asyncio.run(resolve_approvals(state))] == ["call_1"]  # pending

    approver.approvals.approve(approval["approval_id"], reason="invoice matches")
    assert asyncio.run(resolve_approvals(state)) == []
    resumed = run(agent, state)
    assert paid == [("acme", 1250)]
    assert resumed.interruptions == []
    assert resumed.final_output == "Paid acme."
    assert model.tool_outputs() == ["paid 1250 to acme"]
    assert consumed_tokens(api) == 1
    assert approver.approvals.get(approval["approval_id"])["status"] == "used"
    assert verdicts(api, "payments.create_payout") == ["DEFER", "ALLOW"]


def test_an_sdk_approval_alone_does_not_run_the_tool(api: Api) -> None:
    client, _ = people(api)
    paid: list[tuple[str, int]] = []
    model = ScriptedModel([call("create_payout", {"vendor": "acme", "amount": 1250})],
                          [say("Still waiting for approval.")])
    agent = Agent(name="payments", model=model, tools=[payout_tool(client, paid)])

    result = run(agent, "pay invoice 2231")
    [item] = result.interruptions
    state = result.to_state()
    state.approve(item)  # a human clicks "approve" in the app, but Stage0 has not approved
    resumed = run(agent, state)
    assert paid == []
    assert resumed.final_output == "Still waiting for approval."
    [output] = model.tool_outputs()
    refusal = json.loads(output)
    assert (refusal["error"], refusal["verdict"]) == ("stage0_deferred", "DEFER")
    assert refusal["approval_id"]
    assert "APPROVAL_REQUIRED_PENDING" in refusal["issues"]
    assert consumed_tokens(api) == 0


def test_a_stage0_rejection_rejects_the_interruption(api: Api) -> None:
    client, approver = people(api)
    paid: list[tuple[str, int]] = []
    model = ScriptedModel([call("create_payout", {"vendor": "acme", "amount": 1250})],
                          [say("The payout was rejected.")])
    agent = Agent(name="payments", model=model, tools=[payout_tool(client, paid)])

    result = run(agent, "pay invoice 2231")
    [item] = result.interruptions
    approval = asyncio.run(stage0_approval(item))
    assert approval is not None
    approver.approvals.reject(approval["approval_id"], reason="duplicate invoice")
    state = result.to_state()
    assert asyncio.run(resolve_approvals(state)) == []
    resumed = run(agent, state)
    assert paid == []
    assert resumed.final_output == "The payout was rejected."
    [output] = model.tool_outputs()
    assert json.loads(output)["error"] == "stage0_approval_rejected"
    assert json.loads(output)["approval_id"] == approval["approval_id"]


def test_a_serialized_run_resumes_in_a_fresh_runtime(api: Api) -> None:
    """The run state survives a restart: new tool objects find the approval again."""
    client, approver = people(api)
    paid: list[tuple[str, int]] = []
    first = Agent(name="payments", tools=[payout_tool(client, paid)],
                  model=ScriptedModel([call("create_payout", {"vendor": "acme", "amount": 90})]))
    saved = run(first, "pay invoice 7").to_state().to_string()
    approver.approvals.approve(approver.approvals.list()[0]["approval_id"])

    model = ScriptedModel([say("Paid.")])
    agent = Agent(name="payments", model=model, tools=[payout_tool(client, paid)])
    state = asyncio.run(RunState.from_string(agent, saved))
    assert asyncio.run(resolve_approvals(state)) == []
    resumed = run(agent, state)
    assert paid == [("acme", 90)]
    assert resumed.final_output == "Paid."
    assert consumed_tokens(api) == 1


def test_an_async_client_defers_and_resumes_the_same_way(api: Api) -> None:
    _, approver = people(api)
    key = api.new_key(scopes=["check"], principal="agent-7")
    paid: list[tuple[str, int]] = []
    model = ScriptedModel([call("create_payout", {"vendor": "acme", "amount": 1250})],
                          [say("Paid acme.")])

    async def scenario() -> Any:
        transport = httpx.ASGITransport(app=api.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://stage0.test") as http:
            agent = Agent(name="payments", model=model,
                          tools=[payout_tool(AsyncClient(api_key=key, http_client=http), paid)])
            result = await Runner.run(agent, "pay invoice 2231", run_config=RUN)
            [item] = result.interruptions
            approval = await stage0_approval(item)
            assert approval is not None
            assert paid == []
            await asyncio.to_thread(approver.approvals.approve, approval["approval_id"])
            state = result.to_state()
            assert await resolve_approvals(state) == []
            return (await Runner.run(agent, state, run_config=RUN)).final_output

    assert asyncio.run(scenario()) == "Paid acme."
    assert paid == [("acme", 1250)]
    assert consumed_tokens(api) == 1


def test_needs_approval_alone_interrupts_whatever_is_not_allowed(api: Api) -> None:
    client, _ = people(api)
    deleted: list[str] = []

    @function_tool(needs_approval=stage0_needs_approval(
        client=client, tool="db.delete_rows", side_effects=["delete"]))
    def delete_rows(table: str) -> str:
        """Delete every row of a table."""
        deleted.append(table)
        return "deleted"

    model = ScriptedModel([call("delete_rows", {"table": "customers"})])
    result = run(Agent(name="ops", model=model, tools=[delete_rows]), "clean up")
    assert deleted == []
    assert [i.tool_name for i in result.interruptions] == ["delete_rows"]


def test_the_example_agent_waits_for_the_approval_and_pays(api: Api) -> None:
    spec = importlib.util.spec_from_file_location("openai_agents_agent", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # importing it runs nothing
    client, approver = people(api)
    model = ScriptedModel(
        [call("create_payout", {"vendor": "acme-supplies", "amount": 1250, "currency": "EUR"})],
        [say("Paid invoice 2231.")])
    agent = example.build_agent(client).clone(model=model)

    def approve_soon() -> None:
        for _ in range(200):
            pending = approver.approvals.list()
            if pending:
                approver.approvals.approve(pending[0]["approval_id"], reason="PO-88")
                return
            time.sleep(0.05)

    approving = threading.Thread(target=approve_soon, daemon=True)
    approving.start()
    assert asyncio.run(example.run_task(agent, "pay invoice 2231", 10)) == "Paid invoice 2231."
    approving.join(5)
    assert model.tool_outputs() == ["payout of 1250 EUR to acme-supplies released"]
    assert consumed_tokens(api) == 1
