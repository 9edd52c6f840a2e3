"""#16 item 2: the MCP gateway forwards a ``tools/call``'s trace context (``_meta.traceparent``,
``_meta.tracestate``) to Stage0 as headers, so the decision's span joins the caller's trace."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import orjson
from mcp import types

from stage0.integrations.mcp import Gateway, GatewayConfig, Route, trace_headers
from stage0.sdk.client import AsyncClient

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
DENY = {"verdict": "DENY", "decision": "NO_GO", "request_id": "r-1", "reason": "no",
        "policy_version": "p@1", "issues": [{"code": "ROLE_NOT_AUTHORIZED", "severity": "high",
                                             "message": "no", "effect": "DENY"}],
        "risk_score": 90, "high_risk": True, "guardrail_checks": {}, "buckets": [],
        "action_digest": "0" * 64}


def test_trace_headers_take_the_w3c_keys_only() -> None:
    assert trace_headers(None) == {}
    assert trace_headers({"traceparent": TRACEPARENT, "tracestate": "a=1", "progressToken": 3,
                          "other": "x"}) == {"traceparent": TRACEPARENT, "tracestate": "a=1"}
    assert trace_headers({"traceparent": 7}) == {}


def test_the_call_to_stage0_carries_the_requests_trace_context() -> None:
    seen: list[httpx.Headers] = []

    def stage0(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers)
        return httpx.Response(200, content=orjson.dumps(DENY),
                              headers={"content-type": "application/json"})

    async def scenario() -> None:
        http = httpx.AsyncClient(base_url="http://stage0.test",
                                 transport=httpx.MockTransport(stage0))
        client = AsyncClient("http://stage0.test", "sk_test", http_client=http)
        config = GatewayConfig.model_validate({"servers": {"srv": {"command": "true"}}})
        gateway = Gateway(config, client=client)
        tool = types.Tool(name="wipe", input_schema={"type": "object"})
        gateway.routes = {"srv__wipe": Route("srv__wipe", "srv", tool)}
        ctx: Any = SimpleNamespace(protocol_version="2025-06-18", request=None)
        for meta in ({"traceparent": TRACEPARENT, "tracestate": "vendor=1"}, None):
            params = types.CallToolRequestParams.model_validate(
                {"name": "srv__wipe", "arguments": {}, **({"_meta": meta} if meta else {})})
            result = await gateway._on_call_tool(ctx, params)
            assert isinstance(result, types.CallToolResult)
            assert result.is_error
        await http.aclose()

    anyio.run(scenario)
    assert seen[0]["traceparent"] == TRACEPARENT
    assert seen[0]["tracestate"] == "vendor=1"
    assert "traceparent" not in seen[-1]  # the next call, without a trace, sends none
