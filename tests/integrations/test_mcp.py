"""The MCP gateway end to end.

A real MCP client session (the SDK's stdio client) talks to ``python -m stage0 mcp-proxy`` as a
subprocess; the proxy fronts ``mcp_downstream.py`` (a stdio MCP server with a harmless and a
destructive tool, which appends a line to a marker file whenever a tool really runs) and asks
a real ``stage0 serve`` (SQLite) before every call.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from click.testing import CliRunner
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from stage0.cli.main import cli
from stage0.integrations.mcp import (
    META_KEY,
    DownstreamServer,
    GatewayConfig,
    Route,
    ToolRule,
    annotation_effects,
    check_request,
    load_config,
    side_effects_for,
)
from stage0.sdk import Client
from stage0.store import Store
from stage0.store.keys import create_key
from tests.service.conftest import free_port, fresh_database, start_server

REPO = Path(__file__).resolve().parents[2]
DOWNSTREAM = Path(__file__).with_name("mcp_downstream.py")
TIME_LIMIT = 120  # seconds for one whole scenario: proxy start, downstream start, calls


@dataclass(frozen=True)
class Stage0:
    url: str
    agent_key: str
    approver_key: str
    auditor_key: str
    other_agent_key: str = ""
    """A second agent key (`check`) of the same tenant: another caller."""

    def consumed_tokens(self) -> int:
        """How many execution tokens were consumed in the tenant (from the decision log)."""
        response = httpx.get(f"{self.url}/v1/decisions", timeout=10,
                             params={"kind": "token.consumed", "limit": 500},
                             headers={"x-api-key": self.auditor_key})
        response.raise_for_status()
        return len(response.json()["items"])


@pytest.fixture(scope="module")
def stage0_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage0]:
    tmp = tmp_path_factory.mktemp("stage0")
    with fresh_database("sqlite", tmp) as url:
        store = Store(url)
        try:
            store.migrate()
            _, agent = create_key(store, tenant="default", name="mcp-agent", scopes=["check"],
                                  principal="agent-mcp", plan="pro", unlimited=True)
            _, approver = create_key(store, tenant="default", name="mcp-approver",
                                     scopes=["approve"], principal="alice", plan="pro",
                                     unlimited=True)
            _, auditor = create_key(store, tenant="default", name="mcp-auditor",
                                    scopes=["audit:read"], plan="pro", unlimited=True)
            _, other = create_key(store, tenant="default", name="mcp-agent-2", scopes=["check"],
                                  principal="agent-mcp-2", plan="pro", unlimited=True)
        finally:
            store.dispose()
        server = start_server(url, tmp)
        try:
            yield Stage0(server.url, agent, approver, auditor, other)
        finally:
            server.stop()


def marker_lines(marker: Path) -> list[dict[str, Any]]:
    if not marker.exists():
        return []
    return [json.loads(line) for line in marker.read_text("utf-8").splitlines() if line]


@asynccontextmanager
async def proxy(args: list[str], env: dict[str, str], log: Path) -> AsyncIterator[ClientSession]:
    """``python -m stage0 mcp-proxy ARGS`` as an MCP server, through the SDK's stdio client."""
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "stage0", "mcp-proxy", *args], env=env,
                                   cwd=str(REPO))
    with log.open("w", encoding="utf-8") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), \
                ClientSession(read, write, read_timeout_seconds=60) as session:
            await session.initialize()
            yield session


def run(scenario: Callable[[], Awaitable[None]], log: Path) -> None:
    async def bounded() -> None:
        with anyio.fail_after(TIME_LIMIT):
            await scenario()

    try:
        anyio.run(bounded)
    except BaseException:
        if log.exists():
            sys.stderr.write(f"--- mcp-proxy stderr ---\n{log.read_text('utf-8')}\n")
        raise


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def decision_of(result: types.CallToolResult) -> dict[str, Any]:
    """Stage0's decision on a blocked call: in ``_meta``, never in ``structuredContent``."""
    assert result.is_error
    assert result.structured_content is None
    assert result.meta is not None
    decision: dict[str, Any] = result.meta[META_KEY]
    return decision


def test_single_server_allows_the_harmless_call_and_denies_the_destructive_one(
    stage0_server: Stage0, tmp_path: Path,
) -> None:
    marker, log = tmp_path / "calls.jsonl", tmp_path / "proxy.log"
    env = {"STAGE0_API_BASE": stage0_server.url, "STAGE0_API_KEY": stage0_server.agent_key}

    async def scenario() -> None:
        args = ["--server-name", "notes", "--", sys.executable, str(DOWNSTREAM), str(marker)]
        async with proxy(args, env, log) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert {"notes__echo", "notes__remove_note"} <= set(tools)
            assert tools["notes__remove_note"].annotations is not None
            assert tools["notes__remove_note"].annotations.destructive_hint is True
            assert tools["notes__echo"].input_schema["required"] == ["text"]

            allowed = await session.call_tool("notes__echo", {"text": "hello"})
            assert not allowed.is_error, text_of(allowed)
            assert text_of(allowed) == "echo: hello"
            assert marker_lines(marker) == [{"tool": "echo", "arguments": {"text": "hello"}}]

            denied = await session.call_tool("notes__remove_note", {"note": "n1"})
            text = text_of(denied)
            info = decision_of(denied)
            assert info["verdict"] == "DENY"
            assert info["tool"] == "notes.remove_note"  # the qualified name Stage0 was asked
            assert info["request_id"]
            assert f"request_id: {info['request_id']}" in text
            assert info["policy_version"] == "stage0-policy-pack@1.0.0"
            assert f"policy_version: {info['policy_version']}" in text
            # the destructive hint alone added the `delete` side effect: no guardrails given
            assert "SIDE_EFFECTS_NEED_GUARDRAILS" in info["issues"]
            assert "SIDE_EFFECTS_NEED_GUARDRAILS" in text
            assert [m["tool"] for m in marker_lines(marker)] == ["echo"]  # never forwarded

            with pytest.raises(MCPError, match="unknown tool"):
                await session.call_tool("notes__nope", {})

    run(scenario, log)


def test_an_unreachable_stage0_fails_closed(stage0_server: Stage0, tmp_path: Path) -> None:
    marker, log = tmp_path / "calls.jsonl", tmp_path / "proxy.log"
    env = {"STAGE0_API_BASE": stage0_server.url, "STAGE0_API_KEY": stage0_server.agent_key}
    nowhere = f"http://127.0.0.1:{free_port()}"  # --api-base wins over STAGE0_API_BASE

    async def scenario() -> None:
        args = ["--api-base", nowhere, "--", sys.executable, str(DOWNSTREAM), str(marker)]
        async with proxy(args, env, log) as session:
            result = await session.call_tool("server__echo", {"text": "hello"})
            info = decision_of(result)
            assert (info["verdict"], info["decision"]) == ("DENY", "ERROR")
            assert info["issues"] == ["SERVICE_UNAVAILABLE"]
            assert marker_lines(marker) == []

    run(scenario, log)


def test_deferred_call_runs_once_after_approval(stage0_server: Stage0, tmp_path: Path) -> None:
    marker, log = tmp_path / "calls.jsonl", tmp_path / "proxy.log"
    config = tmp_path / "mcp-proxy.yaml"
    config.write_text(yaml.safe_dump({
        "stage0": {"base_url": stage0_server.url, "context": {"actor_id": "agent-mcp"}},
        "servers": {"notes": {
            "command": sys.executable, "args": [str(DOWNSTREAM), str(marker)],
            "tools": {"remove_note": {"constraints": ["approval required"],
                                      "success_criteria": ["the note is gone"]}},
        }},
    }), "utf-8")
    env = {"STAGE0_API_KEY": stage0_server.agent_key}  # the base URL comes from the config
    approver = Client(base_url=stage0_server.url, api_key=stage0_server.approver_key)

    seen: dict[str, str] = {}

    def removals() -> list[dict[str, Any]]:
        return [m for m in marker_lines(marker) if m["tool"] == "remove_note"]

    consumed_before = stage0_server.consumed_tokens()

    async def scenario() -> None:
        async with proxy(["--config", str(config)], env, log) as session:
            deferred = await session.call_tool("notes__remove_note", {"note": "n2"})
            info = decision_of(deferred)
            assert info["verdict"] == "DEFER"
            approval_id = info["approval_id"]
            assert approval_id.startswith("apr_")
            seen["approval_id"] = approval_id
            text = text_of(deferred)
            for needle in (f"approval_id: {approval_id}", f"request_id: {info['request_id']}",
                           "policy_version: stage0-policy-pack@1.0.0",
                           "APPROVAL_REQUIRED_PENDING"):
                assert needle in text, (needle, text)
            assert removals() == []

            again = await session.call_tool("notes__remove_note", {"note": "n2"})
            assert decision_of(again)["approval_id"] == approval_id
            assert removals() == []

            decided = await anyio.to_thread.run_sync(
                lambda: approver.approvals.approve(approval_id, reason="checked"))
            assert decided["status"] == "approved"

            done = await session.call_tool("notes__remove_note", {"note": "n2"})
            assert not done.is_error, text_of(done)
            assert text_of(done) == "removed n2"
            # the ALLOW carried an execution token, which the gateway consumed before forwarding
            assert stage0_server.consumed_tokens() == consumed_before + 1
            assert removals() == [{"tool": "remove_note", "arguments": {"note": "n2"}}]

            # the approval covered one execution: the next identical call asks again
            after = await session.call_tool("notes__remove_note", {"note": "n2"})
            assert decision_of(after)["verdict"] == "DEFER"
            assert decision_of(after)["approval_id"] != approval_id
            assert len(removals()) == 1
            assert stage0_server.consumed_tokens() == consumed_before + 1

    try:
        run(scenario, log)
        assert approver.approvals.get(seen["approval_id"])["status"] == "used"
    finally:
        approver.close()


def test_the_same_call_after_a_rejection_ends_once(stage0_server: Stage0,
                                                   tmp_path: Path) -> None:
    """An MCP client cannot resume a call; it makes the same call again. The gateway retries it
    with the approval it returned for that call, so after a rejection the same call is denied
    (``APPROVAL_REJECTED``) instead of opening a new request; the call after that is a new
    request."""
    marker, log = tmp_path / "calls.jsonl", tmp_path / "proxy.log"
    config = tmp_path / "mcp-proxy.yaml"
    config.write_text(yaml.safe_dump({
        "stage0": {"base_url": stage0_server.url, "context": {"actor_id": "agent-mcp"}},
        "servers": {"notes": {
            "command": sys.executable, "args": [str(DOWNSTREAM), str(marker)],
            "tools": {"remove_note": {"constraints": ["approval required"],
                                      "success_criteria": ["the note is gone"]}},
        }},
    }), "utf-8")
    env = {"STAGE0_API_KEY": stage0_server.agent_key}
    approver = Client(base_url=stage0_server.url, api_key=stage0_server.approver_key)
    note = f"n-{tmp_path.name}"

    def requests_for_the_note() -> list[str]:
        items = httpx.get(f"{stage0_server.url}/v1/approvals", timeout=10,
                          params={"limit": 500}, headers={"x-api-key": stage0_server.auditor_key}
                          ).json()["items"]
        return [a["approval_id"] for a in items if a["action"]["arguments"] == {"note": note}]

    async def scenario() -> None:
        async with proxy(["--config", str(config)], env, log) as session:
            deferred = decision_of(await session.call_tool("notes__remove_note", {"note": note}))
            approval_id = deferred["approval_id"]
            await anyio.to_thread.run_sync(
                lambda: approver.approvals.reject(approval_id, reason="keep it"))

            again = decision_of(await session.call_tool("notes__remove_note", {"note": note}))
            assert (again["verdict"], again["issues"]) == ("DENY", ["APPROVAL_REJECTED"])
            assert requests_for_the_note() == [approval_id]  # nothing new for the approvers

            asked_anew = decision_of(await session.call_tool("notes__remove_note",
                                                             {"note": note}))
            assert asked_anew["verdict"] == "DEFER"
            assert asked_anew["approval_id"] != approval_id
            assert marker_lines(marker) == []

    try:
        run(scenario, log)
    finally:
        approver.close()


# -- the pieces, without processes -----------------------------------------------------------


def _tool(name: str, *, read_only_hint: bool | None = None,
          destructive_hint: bool | None = None, open_world_hint: bool | None = None) -> types.Tool:
    hints = types.ToolAnnotations(read_only_hint=read_only_hint,
                                  destructive_hint=destructive_hint,
                                  open_world_hint=open_world_hint)
    return types.Tool(name=name, input_schema={"type": "object"},
                      annotations=None if hints == types.ToolAnnotations() else hints)


def test_annotations_only_add_risk() -> None:
    server = DownstreamServer(command="x", side_effects=["send_email"])
    rule = ToolRule(side_effects=["write"])
    assert annotation_effects(_tool("t")) == []
    assert annotation_effects(_tool("t", destructive_hint=False, open_world_hint=False)) == []
    assert annotation_effects(_tool("t", destructive_hint=True)) == ["delete"]
    assert annotation_effects(_tool("t", open_world_hint=True)) == ["external_notification"]
    # a read-only hint removes nothing that was configured
    assert side_effects_for(server, rule, _tool("t", read_only_hint=True)) == [
        "send_email", "write"]
    assert side_effects_for(server, rule, _tool("t", destructive_hint=True,
                                                open_world_hint=True)) == [
        "send_email", "write", "delete", "external_notification"]


def test_check_request_names_the_server_and_the_tool() -> None:
    config = GatewayConfig.model_validate({
        "stage0": {"environment": "production", "context": {"actor_id": "a-1"}},
        "servers": {"files": {"command": "x", "constraints": ["sandbox"],
                              "tools": {"rm": {"side_effects": ["delete"],
                                               "constraints": ["approval required"]}}},
                    "web": {"command": "y"}},
    })
    route = Route("files.rm", "files", _tool("rm", open_world_hint=True))
    body = check_request(config, route, {"path": "/tmp/x"})
    assert body["tools"] == ["files.rm"]
    assert body["arguments"] == {"path": "/tmp/x"}
    assert body["side_effects"] == ["delete", "external_notification"]
    assert body["constraints"] == ["sandbox", "approval required"]
    assert body["context"] == {"actor_id": "a-1", "mcp_server": "files", "mcp_tool": "rm",
                               "active_mcp_servers": ["files", "web"],
                               "current_tool": "files.rm", "environment": "production"}


def test_the_example_config_is_valid() -> None:
    config = load_config(REPO / "examples" / "mcp-proxy.yaml")
    assert config.servers


def test_the_command_needs_a_config_or_a_command() -> None:
    result = CliRunner().invoke(cli, ["mcp-proxy"])
    assert result.exit_code == 2
    assert "--config" in result.output
    result = CliRunner().invoke(cli, ["mcp-proxy", "--config", "/nonexistent.yaml"])
    assert result.exit_code == 1
    assert "cannot read" in result.output
