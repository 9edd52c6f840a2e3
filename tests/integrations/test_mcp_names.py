"""The MCP gateway's re-exported tool names and blocked results, without processes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from mcp import types

from stage0.cli.main import cli
from stage0.integrations.mcp import (
    MCP_TOOL_NAME,
    META_KEY,
    OPENAI_FUNCTION_NAME,
    ConfigError,
    GatewayConfig,
    ToolNames,
    blocked_result,
    build_routes,
    check_request,
    export_name,
)
from stage0.sdk.client import CheckResult
from stage0.sdk.guard import ActionDeferred

# The MCP spec's `_meta` key format (basic/index.mdx, "General fields"): an optional prefix of
# dot-separated labels and a slash, then a name; a prefix whose second label is
# `modelcontextprotocol` or `mcp` is reserved for MCP (2025-11-25 and later).
_LABEL = r"[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
META_KEY_FORMAT = re.compile(
    rf"^(?:{_LABEL}(?:\.{_LABEL})*/)?(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?$")


def tool(name: str) -> types.Tool:
    return types.Tool(name=name, input_schema={"type": "object"})


def config(servers: dict[str, Any], **extra: Any) -> GatewayConfig:
    return GatewayConfig.model_validate({"servers": servers, **extra})


def test_default_names_join_with_a_double_underscore() -> None:
    assert export_name("fs", "read_file") == "fs__read_file"
    assert export_name("fs", "read_file", prefix=False) == "read_file"
    assert export_name("fs", "read_file", names=ToolNames(separator="-")) == "fs-read_file"
    assert export_name("fs", "read_file", names=ToolNames(separator=".")) == "fs.read_file"


def test_characters_clients_refuse_become_underscores() -> None:
    assert export_name("fs", "files.read") == "fs__files_read"
    assert export_name("fs", "a b/c,d:e") == "fs__a_b_c_d_e"
    assert export_name("fs", "files.read", prefix=False) == "files_read"
    # a separator's own characters are kept (here the dot, chosen explicitly)
    assert export_name("fs", "files.read", names=ToolNames(separator=".")) == "fs.files.read"


def test_long_names_are_cut_deterministically_and_stay_distinct() -> None:
    long_a, long_b = "x" * 70 + "_alpha", "x" * 70 + "_beta"
    a, b = export_name("notes", long_a), export_name("notes", long_b)
    assert len(a) == len(b) == 64
    assert a != b
    assert a.startswith("notes__xxxx")
    assert re.fullmatch(r"notes__x{48}_[0-9a-f]{8}", a)
    assert export_name("notes", long_a) == a  # the same tool always gets the same name
    assert export_name("other", long_a) != a  # the hash covers the server too
    assert len(export_name("notes", long_a, names=ToolNames(max_length=32))) == 32
    exact = "y" * (64 - len("notes__"))
    assert export_name("notes", exact) == f"notes__{exact}"  # 64 fits: left as it is
    assert re.fullmatch(r"_[0-9a-f]{8}", export_name("notes", "", prefix=False))


@given(server=st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"), name=st.text(max_size=200),
       prefix=st.booleans())
def test_every_exported_name_is_accepted_by_openai_and_mcp(server: str, name: str,
                                                           prefix: bool) -> None:
    exported = export_name(server, name, prefix=prefix)
    assert OPENAI_FUNCTION_NAME.match(exported), exported
    assert MCP_TOOL_NAME.match(exported), exported


def test_routes_map_back_without_splitting_names() -> None:
    cfg = config({"x": {"command": "a"}, "y": {"command": "b"}})
    routes = build_routes(cfg, {"x": [tool("a__b"), tool("c.d")], "y": [tool("a__b")]})
    assert {name: (r.server, r.tool.name) for name, r in routes.items()} == {
        "x__a__b": ("x", "a__b"), "x__c_d": ("x", "c.d"), "y__a__b": ("y", "a__b")}
    assert routes["x__a__b"].qualified == "x.a__b"


def test_two_tools_under_one_name_is_an_error_naming_both() -> None:
    cfg = config({"x": {"command": "a"}, "x__a": {"command": "b"}})
    with pytest.raises(ConfigError, match=r"exported as `x__a__b`: `x\.a__b` and `x__a\.b`"):
        build_routes(cfg, {"x": [tool("a__b")], "x__a": [tool("b")]})
    # the dot and the underscore both end up `_`: the same name, refused, never merged
    cfg = config({"x": {"command": "a"}})
    with pytest.raises(ConfigError, match="export_as"):
        build_routes(cfg, {"x": [tool("read.file"), tool("read_file")]})
    cfg = config({"x": {"command": "a", "prefix": False}, "y": {"command": "b", "prefix": False}})
    with pytest.raises(ConfigError, match="set `prefix: true`"):
        build_routes(cfg, {"x": [tool("t")], "y": [tool("t")]})


def test_export_as_renames_one_tool() -> None:
    cfg = config({"x": {"command": "a", "tools": {"read.file": {"export_as": "read_dotted"}}}})
    routes = build_routes(cfg, {"x": [tool("read.file"), tool("read_file")]})
    assert set(routes) == {"read_dotted", "x__read_file"}
    assert routes["read_dotted"].qualified == "x.read.file"
    with pytest.raises(ValueError, match="export_as"):
        config({"x": {"command": "a", "tools": {"t": {"export_as": "no.dots"}}}})
    with pytest.raises(ValueError, match=r"tool_names\.max_length"):
        config({"x": {"command": "a", "tools": {"t": {"export_as": "z" * 20}}}},
               tool_names={"max_length": 16})


def test_tool_names_settings_are_checked() -> None:
    assert config({"x": {"command": "a"}}).tool_names == ToolNames(separator="__", max_length=64)
    for bad in ("", "/", " ", "::", "_" * 9):
        with pytest.raises(ValueError, match="separator"):
            config({"x": {"command": "a"}}, tool_names={"separator": bad})
    for bad_length in (15, 129):
        with pytest.raises(ValueError, match="max_length"):
            config({"x": {"command": "a"}}, tool_names={"max_length": bad_length})
    with pytest.raises(ValueError, match="tool_names"):
        config({"x": {"command": "a"}}, tool_names={"prefix": "no"})


def test_stage0_is_asked_with_the_qualified_name_whatever_the_export() -> None:
    cfg = config({"files": {"command": "x"}})
    route = build_routes(cfg, {"files": [tool("rm")]})["files__rm"]
    body = check_request(cfg, route, {"path": "/tmp/x"})
    assert body["tools"] == ["files.rm"]
    assert body["context"]["mcp_tool"] == "rm"


def test_the_name_separator_option_is_checked() -> None:
    result = CliRunner().invoke(cli, ["mcp-proxy", "--name-separator", "/", "--", "true"])
    assert result.exit_code == 1
    assert "separator `/`" in result.output


def _deferred() -> ActionDeferred:
    body = {"verdict": "DEFER", "decision": "DEFER", "request_id": "req-1",
            "policy_version": "stage0-policy-pack@1.0.0", "reason": "APPROVAL_REQUIRED_PENDING",
            "issues": [{"code": "APPROVAL_REQUIRED_PENDING", "message": "Approval is required"}],
            "approval": {"approval_id": "apr_1", "status": "pending"}}
    return ActionDeferred(CheckResult(body))


def test_a_blocked_result_has_no_structured_content_and_a_namespaced_meta_key() -> None:
    result = blocked_result(_deferred(), "files.rm")
    assert result.is_error
    assert result.structured_content is None
    wire = result.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert "structuredContent" not in wire
    assert list(wire["_meta"]) == [META_KEY]
    assert META_KEY_FORMAT.match(META_KEY)
    prefix_labels = META_KEY.split("/")[0].split(".")
    assert len(prefix_labels) >= 2
    assert prefix_labels[1] not in {"modelcontextprotocol", "mcp"}  # not reserved for MCP
    assert wire["_meta"][META_KEY] == {
        "verdict": "DEFER", "decision": "DEFER", "request_id": "req-1",
        "policy_version": "stage0-policy-pack@1.0.0", "issues": ["APPROVAL_REQUIRED_PENDING"],
        "approval_id": "apr_1", "approval_status": "pending", "approval_url": None,
        "reason": "APPROVAL_REQUIRED_PENDING", "tool": "files.rm"}
    (text,) = result.content
    assert isinstance(text, types.TextContent)
    for needle in ("Stage0 DEFER (DEFER)", "request_id: req-1", "approval_id: apr_1",
                   "issues: APPROVAL_REQUIRED_PENDING"):
        assert needle in text.text
    assert "approval_url" not in text.text  # Stage0 gave none: the gateway builds none


def test_a_blocked_result_names_the_approval_url_when_stage0_gives_one() -> None:
    url = "https://stage0.example/console/approvals/apr_1"
    deferred = _deferred()
    deferred.approval = {**(deferred.approval or {}), "approval_url": url}
    result = blocked_result(deferred, "files.rm")
    assert result.meta is not None
    assert result.meta[META_KEY]["approval_url"] == url
    (text,) = result.content
    assert isinstance(text, types.TextContent)
    assert f"approval_url: {url}" in text.text
