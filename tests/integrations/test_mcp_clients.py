"""`stage0 mcp-proxy` against real MCP clients: the official TypeScript SDK and the Python SDK.

The TypeScript client (``@modelcontextprotocol/sdk``, the version pinned in
``tests/integrations/node/package-lock.json``, installed here with ``npm ci`` into
``tests/integrations/node/node_modules``) is driven by ``node mcp_client.mjs``; it connects over
stdio to ``python -m stage0 mcp-proxy --config ...``, which fronts ``mcp_downstream.py`` (tools
with an ``outputSchema``) and asks a real ``stage0 serve``. That client validates
``structuredContent`` against the tool's ``outputSchema`` even on an ``isError`` result and
refuses a mismatch with -32602, so a blocked result must carry none; the Python client (2.x)
validates only results that are not errors, and is checked here to see the same result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import types
from mcp.shared.tool_name_validation import validate_tool_name

from stage0.integrations.mcp import MCP_TOOL_NAME, META_KEY, OPENAI_FUNCTION_NAME, export_name
from stage0.sdk import Client
from tests.integrations.test_mcp import (
    DOWNSTREAM,
    REPO,
    TIME_LIMIT,
    Stage0,
    decision_of,
    marker_lines,
    proxy,
    run,
    stage0_server,  # noqa: F401 - the module-scoped Stage0 server fixture
    text_of,
)

NODE_DIR = Path(__file__).with_name("node")
CLIENT_SCRIPT = NODE_DIR / "mcp_client.mjs"
LOCK = NODE_DIR / "package-lock.json"
STAMP = NODE_DIR / "node_modules" / ".stage0-lock-sha256"
TS_SDK = "@modelcontextprotocol/sdk"
# The revisions the TypeScript client is made to offer: the SDK's latest, and the first one with
# `outputSchema` / `structuredContent` (the proxy, on the Python SDK, accepts both).
TS_PROTOCOL_VERSIONS = ["2025-11-25", "2025-06-18"]
LONG_NAME = "count_the_words_of_every_note_in_the_notebook_and_show_totals"  # mcp_downstream.py

EXPORTED = {
    "notes__echo", "notes__remove_note", "notes__read_note", "notes__purge_note",
    "notes__search_titles", export_name("notes", LONG_NAME),
}


def locked_version(package: str) -> str:
    lock = json.loads(LOCK.read_text("utf-8"))
    version: str = lock["packages"][f"node_modules/{package}"]["version"]
    return version


@pytest.fixture(scope="session")
def node() -> str:
    """``node``, with the pinned TypeScript SDK installed from the lock file (``npm ci``)."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm_bin is None:
        pytest.fail("node and npm are needed for the TypeScript MCP client test "
                    "(Node 20 or later: apt-get install nodejs npm)")
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text("utf-8").strip() != digest:
        done = subprocess.run(
            [npm_bin, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed ({done.returncode}):\n"
                        f"{done.stdout}\n{done.stderr}")
        STAMP.write_text(digest, "utf-8")
    return node_bin


def proxy_config(tmp_path: Path, stage0: Stage0, marker: Path) -> Path:
    """purge_note needs an approval (DEFER with an approval id); remove_note is destructive with
    no guardrails (DENY); the rest are read-only (ALLOW)."""
    config = tmp_path / "mcp-proxy.yaml"
    config.write_text(yaml.safe_dump({
        "stage0": {"base_url": stage0.url, "context": {"actor_id": "agent-mcp"}},
        "servers": {"notes": {
            "command": sys.executable, "args": [str(DOWNSTREAM), str(marker)],
            "tools": {"purge_note": {"constraints": ["approval required"],
                                     "success_criteria": ["the note is gone"]}},
        }},
    }), "utf-8")
    return config


def run_ts_client(node: str, tmp_path: Path, config: Path | None, stage0: Stage0,
                  calls: list[dict[str, Any]], protocol_version: str,
                  http: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``mcp_client.mjs``: against ``stage0 mcp-proxy --config CONFIG`` on stdio, or, with
    ``http={"url": ..., "headers": {...}}``, against a gateway already serving HTTP."""
    plan = tmp_path / f"plan-{len(list(tmp_path.glob('plan-*')))}.json"
    server = http if http is not None else {
        "command": sys.executable, "args": ["-m", "stage0", "mcp-proxy", "--config", str(config)],
        "env": {"STAGE0_API_KEY": stage0.agent_key}, "cwd": str(REPO)}
    plan.write_text(json.dumps({
        **server, "protocolVersion": protocol_version, "timeoutMs": 60_000, "calls": calls,
    }), "utf-8")
    log = plan.with_suffix(".log")
    with log.open("w", encoding="utf-8") as errlog:
        try:
            done = subprocess.run(
                [node, str(CLIENT_SCRIPT), str(plan)], cwd=NODE_DIR, stdout=subprocess.PIPE,
                stderr=errlog, text=True, timeout=TIME_LIMIT, check=False,
                env={k: v for k, v in os.environ.items() if not k.startswith("STAGE0_")})
        except subprocess.TimeoutExpired:
            sys.stderr.write(f"--- node / mcp-proxy stderr ---\n{log.read_text('utf-8')}\n")
            raise
    if done.returncode != 0:
        pytest.fail(f"node exited {done.returncode}:\n{log.read_text('utf-8')}")
    out: dict[str, Any] = json.loads(done.stdout)
    out["stderr"] = log.read_text("utf-8")  # the proxy's log lines, and node's
    return out


def ts_text(result: dict[str, Any]) -> str:
    return "\n".join(c["text"] for c in result["content"] if c.get("type") == "text")


def assert_client_safe(name: str) -> None:
    assert OPENAI_FUNCTION_NAME.match(name), name
    assert MCP_TOOL_NAME.match(name), name
    checked = validate_tool_name(name)
    assert checked.is_valid, (name, checked.warnings)
    assert not checked.warnings, (name, checked.warnings)


@pytest.mark.parametrize("protocol_version", TS_PROTOCOL_VERSIONS)
def test_typescript_sdk_client_sees_blocked_calls_and_validates_allowed_ones(
    stage0_server: Stage0, node: str, tmp_path: Path, protocol_version: str,  # noqa: F811
) -> None:
    marker = tmp_path / "calls.jsonl"
    config = proxy_config(tmp_path, stage0_server, marker)
    out = run_ts_client(node, tmp_path, config, stage0_server, [
        {"name": "notes__read_note", "arguments": {"note": "two words"}},
        {"name": "notes__purge_note", "arguments": {"note": "n1"}},
        {"name": "notes__remove_note", "arguments": {"note": "n1"}},
        {"name": "notes__search_titles", "arguments": {}},
        {"name": export_name("notes", LONG_NAME), "arguments": {}},
    ], protocol_version)
    assert out["sdkVersion"] == locked_version(TS_SDK)
    assert out["protocolVersion"] == protocol_version
    assert out["server"]["name"] == "stage0-mcp-proxy"

    tools = {t["name"]: t for t in out["tools"]}
    assert set(tools) == EXPORTED
    for name in tools:
        assert_client_safe(name)
    assert tools["notes__read_note"]["outputSchema"]["required"] == ["note", "words"]
    assert tools["notes__purge_note"]["outputSchema"]["required"] == ["note", "purged"]

    calls = {c["name"]: c for c in out["calls"]}
    for call in out["calls"]:
        assert "error" not in call, call  # before the fix: -32602 on the blocked calls

    # ALLOW: the downstream structuredContent, passed through and validated by the client
    read = calls["notes__read_note"]["result"]
    assert not read.get("isError")
    assert read["structuredContent"] == {"note": "two words", "words": 2}

    # DEFER: returned, with the verdict and the approval id in _meta and in the text
    deferred = calls["notes__purge_note"]["result"]
    assert deferred["isError"] is True
    assert "structuredContent" not in deferred
    info = deferred["_meta"][META_KEY]
    assert info["verdict"] == "DEFER"
    assert info["tool"] == "notes.purge_note"
    assert info["approval_id"].startswith("apr_")
    assert info["approval_status"] == "pending"
    assert "APPROVAL_REQUIRED_PENDING" in info["issues"]
    text = ts_text(deferred)
    for needle in ("Stage0 DEFER", f"approval_id: {info['approval_id']}",
                   f"request_id: {info['request_id']}", "APPROVAL_REQUIRED_PENDING"):
        assert needle in text, (needle, text)

    # DENY: the same shape
    denied = calls["notes__remove_note"]["result"]
    assert denied["isError"] is True
    assert "structuredContent" not in denied
    assert denied["_meta"][META_KEY]["verdict"] == "DENY"
    assert "SIDE_EFFECTS_NEED_GUARDRAILS" in denied["_meta"][META_KEY]["issues"]
    assert "SIDE_EFFECTS_NEED_GUARDRAILS" in ts_text(denied)

    # renamed tools map back to their downstream names (a dot; a name cut to 64 characters)
    assert calls["notes__search_titles"]["result"]["structuredContent"] == {
        "result": "titles: n1, n2"}
    assert calls[export_name("notes", LONG_NAME)]["result"]["structuredContent"] == {
        "result": "3 notes, 12 words"}
    assert [m["tool"] for m in marker_lines(marker)] == ["read_note", "search.titles", LONG_NAME]
    assert "`notes.search.titles` is exported as `notes__search_titles`" in out["stderr"]

    # once approved, the same call goes through and its structuredContent validates
    approver = Client(base_url=stage0_server.url, api_key=stage0_server.approver_key)
    try:
        assert approver.approvals.approve(info["approval_id"], reason="ok")["status"] == "approved"
    finally:
        approver.close()
    out = run_ts_client(node, tmp_path, config, stage0_server, [
        {"name": "notes__purge_note", "arguments": {"note": "n1"}}], protocol_version)
    (done,) = out["calls"]
    assert "error" not in done, done
    assert not done["result"].get("isError"), done
    assert done["result"]["structuredContent"] == {"note": "n1", "purged": True}
    assert [m["tool"] for m in marker_lines(marker)][-1] == "purge_note"


def test_python_sdk_client_sees_the_same(stage0_server: Stage0,  # noqa: F811
                                         tmp_path: Path) -> None:
    marker, log = tmp_path / "calls.jsonl", tmp_path / "proxy.log"
    config = proxy_config(tmp_path, stage0_server, marker)
    env = {"STAGE0_API_KEY": stage0_server.agent_key}

    async def scenario() -> None:
        async with proxy(["--config", str(config)], env, log) as session:
            assert session.protocol_version == "2025-11-25"
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert set(tools) == EXPORTED
            for name in tools:
                assert_client_safe(name)
            assert tools["notes__read_note"].output_schema is not None

            # the Python client validates an ALLOW's structuredContent (it raises otherwise)
            read = await session.call_tool("notes__read_note", {"note": "two words"})
            assert not read.is_error, text_of(read)
            assert read.structured_content == {"note": "two words", "words": 2}

            deferred = await session.call_tool("notes__purge_note", {"note": "n1"})
            info = decision_of(deferred)  # isError, no structuredContent, _meta[META_KEY]
            assert info["verdict"] == "DEFER"
            assert info["approval_id"].startswith("apr_")
            assert f"approval_id: {info['approval_id']}" in text_of(deferred)

            denied = await session.call_tool("notes__remove_note", {"note": "n1"})
            assert decision_of(denied)["verdict"] == "DENY"

            listed = await session.call_tool("notes__search_titles", {})
            assert listed.structured_content == {"result": "titles: n1, n2"}
            assert isinstance(listed.content[0], types.TextContent)
            assert [m["tool"] for m in marker_lines(marker)] == ["read_note", "search.titles"]

    run(scenario, log)
