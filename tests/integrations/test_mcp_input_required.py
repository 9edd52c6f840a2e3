"""A deferred call for clients on MCP 2026-07-28: ``input_required`` with a sealed request state
(issue #14, item 6).

The client is the official Python SDK's ``mcp.Client`` (``mode="auto"``: it probes
``server/discover`` and settles on 2026-07-28), over streamable HTTP with a Stage0 key as bearer
token, and once over stdio; its own multi-round-trip driver retries the call with the state the
gateway returned. ``python -m stage0 mcp-proxy --listen`` fronts ``mcp_downstream.py`` (stdio)
and asks a real ``stage0 serve``; approvers act through Stage0's API while the call waits.
Older clients keep the retry-the-same-call behaviour (``test_mcp.py``, ``test_mcp_http.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from mcp import Client, types
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server.request_state import InvalidRequestState
from mcp.shared.exceptions import MCPError

from stage0.integrations.mcp import META_KEY
from stage0.integrations.mcp_results import (
    STATE_KEYS_ENV,
    PendingApproval,
    approval_elicitation,
    input_required_result,
    request_state_security,
)
from stage0.sdk import Client as Stage0Client
from stage0.sdk.client import CheckResult
from stage0.sdk.guard import ActionDeferred
from stage0.store import Store
from stage0.store.keys import create_key
from tests.integrations.test_mcp import (
    DOWNSTREAM,
    REPO,
    Stage0,
    marker_lines,
    stage0_server,  # noqa: F401 - the module-scoped Stage0 server fixture
)
from tests.integrations.test_mcp_http import approve, gateway_http, mcp_client, run_async
from tests.service.conftest import fresh_database, start_server

MODERN = "2026-07-28"
TTL = 4.0  # seconds a request state is valid (input_required.ttl)
ROUNDS = 3  # input_required.max_rounds
INVALID_STATE = "Invalid or expired requestState"


@dataclass(frozen=True)
class Gateway:
    url: str
    stage0: Stage0
    marker: Path
    config: Path
    log: Path

    def ran(self, note: str) -> list[str]:
        return [m["tool"] for m in marker_lines(self.marker)
                if m["arguments"].get("note") == note]


def write_config(path: Path, stage0: Stage0, marker: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "stage0": {"base_url": stage0.url, "context": {"actor_id": "agent-mcp"}},
        "servers": {"notes": {
            "command": sys.executable, "args": [str(DOWNSTREAM), str(marker)],
            "tools": {"purge_note": {"constraints": ["approval required"],
                                     "success_criteria": ["the note is gone"]}}}},
        "input_required": {"poll_seconds": 1, "max_rounds": ROUNDS, "ttl": TTL},
    }), "utf-8")
    return path


@pytest.fixture(scope="module")
def gateway(stage0_server: Stage0,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("mcp-mrtr")
    marker = tmp / "calls.jsonl"
    config = write_config(tmp / "gateway.yaml", stage0_server, marker)
    log = tmp / "gateway.log"
    try:
        with gateway_http(config, {}, log) as url:
            yield Gateway(url, stage0_server, marker, config, log)
    except BaseException:
        sys.stderr.write(f"--- mcp-proxy log ---\n{log.read_text('utf-8')}\n")
        raise


async def decide_when_pending(stage0: Stage0, note: str, decision: str) -> str:
    """Wait for the approval request of ``purge_note(note)``, then approve or reject it."""
    async with httpx.AsyncClient(base_url=stage0.url, timeout=10) as http:
        for _ in range(200):
            items = (await http.get("/v1/approvals", params={"status": "pending", "limit": 500},
                                    headers={"x-api-key": stage0.auditor_key})).json()["items"]
            found = [a["approval_id"] for a in items
                     if a["action"]["arguments"] == {"note": note}]
            if found:
                response = await http.post(f"/v1/approvals/{found[0]}/{decision}",
                                           json={"reason": "checked"},
                                           headers={"x-api-key": stage0.approver_key})
                response.raise_for_status()
                return found[0]
            await anyio.sleep(0.1)
    raise AssertionError(f"no approval request for {note}")


def approval_status(stage0: Stage0, approval_id: str) -> str:
    with Stage0Client(base_url=stage0.url, api_key=stage0.approver_key) as approver:
        return str(approver.approvals.get(approval_id)["status"])


def meta_of(result: Any) -> dict[str, Any]:
    info: dict[str, Any] = result.meta[META_KEY]
    return info


def test_the_call_waits_in_input_required_and_runs_once_approved(gateway: Gateway) -> None:
    note, seen = "mrtr-approved", {}

    async def scenario() -> None:
        async with mcp_client(gateway.url, gateway.stage0.agent_key) as client:
            assert client.protocol_version == MODERN
            async with anyio.create_task_group() as tg:
                async def approver() -> None:
                    seen["approval_id"] = await decide_when_pending(gateway.stage0, note,
                                                                    "approve")
                tg.start_soon(approver)
                # one call: the SDK's driver retries it with the sealed state until it is done
                done = await client.call_tool("notes__purge_note", {"note": note})
            assert not done.is_error, done
            assert done.structured_content == {"note": note, "purged": True}

    run_async(scenario, gateway.log)
    assert gateway.ran(note) == ["purge_note"]
    assert approval_status(gateway.stage0, seen["approval_id"]) == "used"


def test_the_result_carries_the_approval_and_an_opaque_sealed_state(gateway: Gateway) -> None:
    note = "mrtr-sealed"
    arguments = {"note": note}

    async def scenario() -> None:
        async with mcp_client(gateway.url, gateway.stage0.agent_key) as client:
            session = client.session
            first = await session.call_tool("notes__purge_note", arguments,
                                            allow_input_required=True)
            assert isinstance(first, types.InputRequiredResult)
            info = meta_of(first)
            assert info["verdict"] == "DEFER"
            assert info["approval_id"].startswith("apr_")
            assert "approval_url" in info  # Stage0's console URL when it knows its public URL
            assert "APPROVAL_REQUIRED_PENDING" in info["issues"]
            state = first.request_state
            assert state is not None
            assert state.startswith("v1.")
            assert info["approval_id"] not in state  # sealed: encrypted, not only signed
            with pytest.raises(MCPError, match=INVALID_STATE):
                PendingApproval.load(state)  # never readable without the gateway's key

            async def retry(state: str, name: str = "notes__purge_note",
                            args: dict[str, Any] = arguments) -> Any:
                return await session.call_tool(name, args, request_state=state,
                                               allow_input_required=True)

            tampered = state[:20] + ("A" if state[20] != "A" else "B") + state[21:]
            for bad in (retry(tampered), retry(state, args={"note": "another note"}),
                        retry(state, name="notes__remove_note"), retry(state + "x")):
                with pytest.raises(MCPError) as refused:
                    await bad
                assert refused.value.error.code == types.INVALID_PARAMS
                assert refused.value.error.message == INVALID_STATE

            # another caller (another Stage0 key) cannot use this caller's state
            async with mcp_client(gateway.url, gateway.stage0.other_agent_key) as other:
                with pytest.raises(MCPError, match=INVALID_STATE):
                    await other.session.call_tool("notes__purge_note", arguments,
                                                  request_state=state,
                                                  allow_input_required=True)

            # an expired state is refused too, even once the approval is granted
            await anyio.to_thread.run_sync(approve, gateway.stage0, info["approval_id"])
            await anyio.sleep(TTL + 0.5)
            with pytest.raises(MCPError, match=INVALID_STATE):
                await retry(state)
            assert gateway.ran(note) == []

            # the call itself, made again, finds the granted approval for the same action
            done = await client.call_tool("notes__purge_note", arguments)
            assert not done.is_error, done

    run_async(scenario, gateway.log)
    assert gateway.ran(note) == ["purge_note"]


def test_a_rejection_ends_the_call_with_the_refusal(gateway: Gateway) -> None:
    note = "mrtr-rejected"

    async def scenario() -> None:
        async with mcp_client(gateway.url, gateway.stage0.agent_key) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(decide_when_pending, gateway.stage0, note, "reject")
                ended = await client.call_tool("notes__purge_note", {"note": note})
            assert ended.is_error
            assert ended.structured_content is None
            assert meta_of(ended)["verdict"] == "DENY"
            assert meta_of(ended)["issues"] == ["APPROVAL_REJECTED"]

    run_async(scenario, gateway.log)
    assert gateway.ran(note) == []


def test_when_the_rounds_run_out_the_call_ends_and_the_same_call_resumes(
    gateway: Gateway,
) -> None:
    note = "mrtr-slow"

    async def scenario() -> None:
        async with mcp_client(gateway.url, gateway.stage0.agent_key) as client:
            with anyio.fail_after(ROUNDS * 1 + 15):
                waited = await client.call_tool("notes__purge_note", {"note": note})
            info = meta_of(waited)
            assert waited.is_error
            assert info["verdict"] == "DEFER"
            assert info["approval_status"] == "pending"
            text = waited.content[0]
            assert isinstance(text, types.TextContent)
            assert f"approval_id: {info['approval_id']}" in text.text
            await anyio.to_thread.run_sync(approve, gateway.stage0, info["approval_id"])
            done = await client.call_tool("notes__purge_note", {"note": note})
            assert not done.is_error, done

    run_async(scenario, gateway.log)
    assert gateway.ran(note) == ["purge_note"]


def test_a_client_that_elicits_asks_its_human_who_gets_it_approved(gateway: Gateway) -> None:
    note, asked = "mrtr-elicited", []

    async def human(ctx: ClientRequestContext,
                    params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        await decide_when_pending(gateway.stage0, note, "approve")  # acts on what it was shown
        return types.ElicitResult(action="accept")

    async def scenario() -> None:
        async with mcp_client(gateway.url, gateway.stage0.agent_key,
                              elicitation_callback=human) as client:
            done = await client.call_tool("notes__purge_note", {"note": note})
            assert not done.is_error, done

    run_async(scenario, gateway.log)
    (params,) = asked
    assert "approval apr_" in params.message
    if isinstance(params, types.ElicitRequestURLParams):  # Stage0 gave an absolute console URL
        assert params.url.startswith("http")
        assert "/console/approvals/apr_" in params.url
    else:  # no public URL known to Stage0: a form with nothing to fill in, naming the approval
        assert isinstance(params, types.ElicitRequestFormParams)
        assert params.requested_schema == {"type": "object", "properties": {}}
    assert gateway.ran(note) == ["purge_note"]


def test_a_human_who_declines_ends_the_call_and_the_approval_stays_open(
    gateway: Gateway,
) -> None:
    note = "mrtr-declined"

    async def human(ctx: ClientRequestContext,
                    params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    async def scenario() -> None:
        async with mcp_client(gateway.url, gateway.stage0.agent_key,
                              elicitation_callback=human) as client:
            ended = await client.call_tool("notes__purge_note", {"note": note})
            info = meta_of(ended)
            assert ended.is_error
            assert (info["verdict"], info["elicitation"]) == ("DEFER", "decline")
            assert approval_status(gateway.stage0, info["approval_id"]) == "pending"

    run_async(scenario, gateway.log)
    assert gateway.ran(note) == []


def test_an_older_client_on_the_same_gateway_gets_the_defer_result(gateway: Gateway) -> None:
    """Clients before 2026-07-28 poll: the DEFER is a tool error, and the same call again goes
    through once approved."""
    note = "mrtr-legacy"

    async def scenario() -> None:
        async with mcp_client(gateway.url, gateway.stage0.agent_key, mode="legacy") as client:
            assert client.protocol_version == "2025-11-25"
            deferred = await client.call_tool("notes__purge_note", {"note": note})
            info = meta_of(deferred)
            assert deferred.is_error
            assert info["verdict"] == "DEFER"
            await anyio.to_thread.run_sync(approve, gateway.stage0, info["approval_id"])
            done = await client.call_tool("notes__purge_note", {"note": note})
            assert not done.is_error, done

    run_async(scenario, gateway.log)
    assert gateway.ran(note) == ["purge_note"]


def test_over_stdio_too(gateway: Gateway, tmp_path: Path) -> None:
    """The gateway on stdio (no bearer token: the state is bound to the call and the gateway)."""
    note = "mrtr-stdio"
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "stage0", "mcp-proxy", "--config",
                                      str(gateway.config)],
        env={"STAGE0_API_KEY": gateway.stage0.agent_key}, cwd=str(REPO))
    log = tmp_path / "stdio.log"

    async def scenario() -> None:
        with log.open("w", encoding="utf-8") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                assert client.protocol_version == MODERN
                async with anyio.create_task_group() as tg:
                    tg.start_soon(decide_when_pending, gateway.stage0, note, "approve")
                    done = await client.call_tool("notes__purge_note", {"note": note})
                assert not done.is_error, done

    run_async(scenario, log)
    assert gateway.ran(note) == ["purge_note"]


# -- the pieces, without processes -----------------------------------------------------------


def _deferred(approval_url: str | None = None) -> ActionDeferred:
    approval: dict[str, Any] = {"approval_id": "apr_1", "status": "pending"}
    if approval_url:
        approval["approval_url"] = approval_url
    return ActionDeferred(CheckResult({
        "verdict": "DEFER", "decision": "DEFER", "request_id": "req-1",
        "policy_version": "stage0-policy-pack@1.0.0", "reason": "APPROVAL_REQUIRED_PENDING",
        "issues": [{"code": "APPROVAL_REQUIRED_PENDING", "message": "Approval is required"}],
        "approval": approval}))


def test_the_elicitation_uses_the_console_url_when_both_sides_have_one() -> None:
    url = "https://stage0.example/console/approvals/apr_1"
    linked = approval_elicitation(_deferred(url), "files.rm", {"url", "form"})
    assert linked is not None
    assert isinstance(linked.params, types.ElicitRequestURLParams)
    assert (linked.params.url, linked.params.elicitation_id) == (url, "apr_1")
    form = approval_elicitation(_deferred(url), "files.rm", {"form"})
    assert form is not None
    assert isinstance(form.params, types.ElicitRequestFormParams)
    assert url in form.params.message
    bare = approval_elicitation(_deferred(), "files.rm", {"url", "form"})
    assert bare is not None
    assert isinstance(bare.params, types.ElicitRequestFormParams)  # no URL: never made up
    assert "stage0 approvals approve apr_1" in bare.params.message
    # a path on Stage0 (no public URL configured there) is named, but not opened as a link
    path = approval_elicitation(_deferred("/console/approvals/apr_1"), "files.rm", {"url", "form"})
    assert path is not None
    assert isinstance(path.params, types.ElicitRequestFormParams)
    assert "/console/approvals/apr_1" in path.params.message
    assert approval_elicitation(_deferred(url), "files.rm", set()) is None


def test_the_input_required_result_carries_the_decision_and_the_state() -> None:
    state = PendingApproval("apr_1", "c" * 64, 1)
    result = input_required_result(_deferred(), "files.rm", state, None)
    wire = result.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert wire["resultType"] == "input_required"
    assert PendingApproval.load(wire["requestState"]) == state  # sealed later, by the SDK
    assert wire["_meta"][META_KEY]["approval_id"] == "apr_1"
    assert "inputRequests" not in wire
    for bad in ("", "{}", '{"v": 2, "approval_id": "a", "call": "c", "round": 1}', "[1]"):
        with pytest.raises(MCPError, match=INVALID_STATE):
            PendingApproval.load(bad)


def test_request_state_keys_rotate() -> None:
    old, new = "o" * 32, "n" * 32
    sealed = request_state_security(60, {STATE_KEYS_ENV: old}).codec.seal(b"state")
    rotated = request_state_security(60, {STATE_KEYS_ENV: f"{new}, {old}"}).codec
    assert rotated.unseal(sealed) == b"state"  # the old key still opens
    with pytest.raises(InvalidRequestState):
        request_state_security(60, {STATE_KEYS_ENV: new}).codec.unseal(sealed)
    with pytest.raises(ValueError, match="32 bytes"):
        request_state_security(60, {STATE_KEYS_ENV: "short"})
    ephemeral = request_state_security(60, {})
    assert ephemeral.codec.unseal(ephemeral.codec.seal(b"x")) == b"x"


# -- with a console URL ----------------------------------------------------------------------

PUBLIC_URL = "https://stage0.example.test"


@pytest.fixture(scope="module")
def stage0_with_console_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage0]:
    """A ``stage0 serve`` that knows its public URL (``STAGE0_PUBLIC_URL``): its DEFERs carry
    an absolute ``approval.approval_url``."""
    tmp = tmp_path_factory.mktemp("stage0-public")
    with fresh_database("sqlite", tmp) as url:
        store = Store(url)
        try:
            store.migrate()
            keys = [create_key(store, tenant="default", name=name, scopes=scopes,
                               principal=principal, plan="pro", unlimited=True)[1]
                    for name, scopes, principal in (
                        ("agent", ["check"], "agent-mcp"), ("approver", ["approve"], "alice"),
                        ("auditor", ["audit:read"], None))]
        finally:
            store.dispose()
        server = start_server(url, tmp, env={"STAGE0_PUBLIC_URL": PUBLIC_URL})
        try:
            yield Stage0(server.url, *keys)
        finally:
            server.stop()


def test_the_console_url_reaches_the_human(stage0_with_console_url: Stage0,
                                           tmp_path: Path) -> None:
    """Stage0 gives the approval's console URL: a 2026-07-28 client that can elicit is sent
    there (URL mode), and an older client reads it in the DEFER's text and ``_meta``."""
    stage0 = stage0_with_console_url
    marker = tmp_path / "calls.jsonl"
    config = write_config(tmp_path / "gateway.yaml", stage0, marker)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "stage0", "mcp-proxy", "--config", str(config)],
        env={"STAGE0_API_KEY": stage0.agent_key}, cwd=str(REPO))
    log, asked = tmp_path / "stdio.log", []

    async def human(ctx: ClientRequestContext,
                    params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        await decide_when_pending(stage0, "linked", "approve")
        return types.ElicitResult(action="accept")

    async def scenario() -> None:
        with log.open("w", encoding="utf-8") as errlog:
            async with Client(stdio_client(params, errlog=errlog),
                              elicitation_callback=human) as client:
                assert client.protocol_version == MODERN
                done = await client.call_tool("notes__purge_note", {"note": "linked"})
                assert not done.is_error, done
            async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
                deferred = await client.call_tool("notes__purge_note", {"note": "older"})
                info = meta_of(deferred)
                url = f"{PUBLIC_URL}/console/approvals/{info['approval_id']}"
                assert info["approval_url"] == url
                text = deferred.content[0]
                assert isinstance(text, types.TextContent)
                assert f"approval_url: {url}" in text.text

    run_async(scenario, log)
    (shown,) = asked
    assert isinstance(shown, types.ElicitRequestURLParams)
    assert shown.url.startswith(f"{PUBLIC_URL}/console/approvals/apr_")
    assert [m["tool"] for m in marker_lines(marker)] == ["purge_note"]
