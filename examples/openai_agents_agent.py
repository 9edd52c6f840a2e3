"""An OpenAI Agents SDK agent whose payout tool is gated by Stage0.

    pip install 'stage0-authz[openai-agents]'
    stage0 serve &                                   # or point STAGE0_API_BASE at your server
    export STAGE0_API_KEY=s0_...                     # a key with the `check` scope
    export OPENAI_API_KEY=sk-...
    python examples/openai_agents_agent.py "Pay acme-supplies 1250 EUR for invoice 2231"

The payout needs an approval: the run stops with an interruption naming the Stage0 approval;
approve it (`stage0 approvals approve ID --key APPROVER_KEY`) and the run resumes, re-checks
with the approval id, consumes the execution token and pays — once.
"""

from __future__ import annotations

import asyncio
import sys

from agents import Agent, FunctionTool, Runner

from stage0.integrations.openai_agents import (
    resolve_approvals,
    stage0_approval,
    stage0_function_tool,
)
from stage0.sdk import Client


def payout_tool(client: Client) -> FunctionTool:
    @stage0_function_tool(client=client, tool="payments.create_payout",
                          side_effects=["money movement"], constraints=["approval required"],
                          environment="production", context={"actor_id": "payments-agent"})
    def create_payout(vendor: str, amount: int, currency: str) -> str:
        """Release a manual payout to a vendor."""
        return f"payout of {amount} {currency} to {vendor} released"

    return create_payout


def build_agent(client: Client) -> Agent[None]:
    return Agent(name="payments", tools=[payout_tool(client)],
                 instructions="You pay vendor invoices with the create_payout tool.")


async def run_task(agent: Agent[None], task: str, wait_seconds: float = 600.0) -> str | None:
    """Run the agent; on an approval interruption wait for Stage0's decision and resume."""
    result = await Runner.run(agent, task)
    while result.interruptions:
        for item in result.interruptions:
            approval = await stage0_approval(item)
            if approval:
                print(f"waiting for Stage0 approval {approval['approval_id']} "
                      f"({item.tool_name} {item.arguments})")
        state = result.to_state()
        still_open = await resolve_approvals(state, wait=wait_seconds)
        if still_open:
            print(f"{len(still_open)} approval(s) still pending; giving up")
            return None
        result = await Runner.run(agent, state)
    return str(result.final_output)


async def main(task: str) -> None:
    with Client() as client:  # STAGE0_API_BASE / STAGE0_API_KEY
        print(await run_task(build_agent(client), task))


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "Pay acme-supplies 1250 EUR for invoice 2231"))
