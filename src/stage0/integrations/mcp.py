"""The MCP gateway: an MCP server that fronts downstream MCP servers and asks Stage0 first.

``stage0 mcp-proxy --config FILE`` (or ``stage0 mcp-proxy -- COMMAND ARGS...``) starts each
downstream server over stdio with the official ``mcp`` SDK, re-exports its tools as
``<server>__<tool>`` (``prefix: false`` keeps the bare name; see :func:`export_name` for the
separator, the character set and the length limit), and gates every ``tools/call``:

- the request sent to ``POST /check`` names the tool ``<server>.<tool>`` (always qualified, so
  the policy sees the same name whatever the export), carries the call's arguments (hence the
  action digest) and ``context.mcp_server`` / ``context.mcp_tool`` / ``context.active_mcp_servers``;
- side effects and constraints come from the config; the tool's annotations can only add to
  them (``destructiveHint: true`` adds ``delete``, ``openWorldHint: true`` adds
  ``external_notification``), never remove one. A hint that is absent or false adds nothing;
- ALLOW: the execution token, if any, is verified offline and consumed, then the call is
  forwarded and the downstream result returned as is;
- DEFER and DENY (and any failure, which fails closed) come back as a tool error
  (``isError: true``, no ``structuredContent``, so it is valid whatever the tool's
  ``outputSchema``) whose text names the verdict, request_id, policy_version, the issue codes,
  the approval id and the approval's console URL (when Stage0 gives one), and whose
  ``_meta[META_KEY]`` has the same fields (:mod:`stage0.integrations.mcp_results`). Once the
  approval is granted, the same call again goes through: the gateway checks again with the id of
  the approval it returned for that call (or finds the granted one for the same action). When
  that approval was rejected, expired or used, the same call again ends with that outcome, once;
- a client on MCP 2026-07-28 gets a DEFER that waits for an approval as an ``input_required``
  result with a sealed request state instead, and retries the call with it until the approval
  is decided (see :mod:`stage0.integrations.mcp_results`).

Downstream servers are started over stdio (``command``) or reached over streamable HTTP
(``url``, with their own ``headers``); the gateway itself serves stdio, or streamable HTTP with
bearer-token authorization (``--listen``, :mod:`stage0.integrations.mcp_http`).

Needs the optional dependency group ``stage0-authz[mcp]``; the core package never imports this
module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

import anyio
import httpx
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.provider import AccessToken, principal_components
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.request_state import RequestStateBoundary
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from stage0 import __version__
from stage0.integrations import mcp_http
from stage0.integrations.mcp_config import (
    DEFAULT_NAME_SEPARATOR,
    HASH_LENGTH,
    MCP_TOOL_NAME,
    META_KEY,
    NAME_CHAR,
    OPENAI_FUNCTION_NAME,
    QUALIFIED_SEPARATOR,
    AnnotationEffects,
    ConfigError,
    DownstreamServer,
    GatewayConfig,
    Stage0Settings,
    ToolNames,
    ToolRule,
    expand_headers,
    load_config,
    single_server_config,
)
from stage0.integrations.mcp_http import API_KEY_AUTH, AUTH_KIND, JWT_AUTH
from stage0.integrations.mcp_results import (
    PendingApproval,
    access_token_of,
    approval_elicitation,
    blocked_result,
    declined_result,
    elicitation_answer,
    elicitation_modes,
    input_required_result,
    request_state_security,
)
from stage0.sdk.client import AsyncClient, CheckResult
from stage0.sdk.guard import (
    ActionBlocked,
    ActionDeferred,
    approval_ended,
    build_request,
    enforce_async,
)

log = logging.getLogger(__name__)

# -- #16 item 2: the MCP request's trace context, forwarded to Stage0 -------------------------
TRACE_KEYS = ("traceparent", "tracestate")
"""The W3C trace-context keys read from a ``tools/call``'s ``_meta`` and sent to Stage0 as
headers, so the decision's span joins the caller's trace."""
_TRACE: ContextVar[dict[str, str] | None] = ContextVar("stage0_mcp_trace", default=None)


def trace_headers(meta: Mapping[str, Any] | None) -> dict[str, str]:
    """The trace-context headers of a request's ``_meta`` (string values only)."""
    if not meta:
        return {}
    return {k: v for k in TRACE_KEYS if isinstance(v := meta.get(k), str) and v}


async def _forward_trace(request: httpx.Request) -> None:
    """httpx request hook: the current ``tools/call``'s trace context on the Stage0 call."""
    for name, value in (_TRACE.get() or {}).items():
        request.headers.setdefault(name, value)
# -- end #16 item 2 ----------------------------------------------------------------------------


def _union(*lists: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for items in lists:
        for item in items:
            seen.setdefault(item, None)
    return list(seen)


def annotation_effects(tool: types.Tool, effects: AnnotationEffects | None = None) -> list[str]:
    """Side effects implied by the tool's annotations: only explicit ``true`` hints count."""
    effects = effects or AnnotationEffects()
    hints = tool.annotations
    if hints is None:
        return []
    added: list[str] = []
    if hints.destructive_hint is True:
        added += effects.destructive
    if hints.open_world_hint is True:
        added += effects.open_world
    return added


def side_effects_for(server: DownstreamServer, rule: ToolRule, tool: types.Tool,
                     effects: AnnotationEffects | None = None) -> list[str]:
    """Configured side effects (server, then tool) plus those the annotations add."""
    return _union(server.side_effects, rule.side_effects, annotation_effects(tool, effects))


def export_name(server: str, tool: str, *, prefix: bool = True,
                names: ToolNames | None = None, export_as: str | None = None) -> str:
    """The name a downstream tool is re-exported under; a pure function of its arguments.

    ``export_as`` if given; else ``<server><separator><tool>`` (``<tool>`` without the prefix),
    every character outside ``A-Z a-z 0-9 _ -`` (and the separator's own) replaced by ``_``, and a
    name longer than ``max_length`` cut to fit and ended with ``_`` and 8 hex digits of the
    SHA-256 of ``<server>``, NUL, ``<tool>`` — so the same tool always gets the same name, and two
    tools whose long names share their start get different ones. With the default separator
    ``__`` every name matches OpenAI's ``^[a-zA-Z0-9_-]{1,64}$`` and MCP's tool-name rule.
    The gateway maps names back through its routing table, never by splitting a name.
    """
    if export_as:
        return export_as
    names = names or ToolNames()
    raw = f"{server}{names.separator}{tool}" if prefix else tool
    allowed = set(names.separator)
    name = "".join(c if c in allowed or NAME_CHAR.match(c) else "_" for c in raw)
    if not name or len(name) > names.max_length:
        digest = hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:HASH_LENGTH]
        name = f"{name[:names.max_length - HASH_LENGTH - 1]}_{digest}"
    return name


@dataclass(frozen=True)
class Route:
    """One re-exported tool: where it goes and what Stage0 is told about it."""

    exported: str
    server: str
    tool: types.Tool

    @property
    def qualified(self) -> str:
        """``<server>.<tool>``: the name in the ``/check`` request, whatever the export."""
        return f"{self.server}{QUALIFIED_SEPARATOR}{self.tool.name}"


def check_request(config: GatewayConfig, route: Route, arguments: Mapping[str, Any],
                  caller: AccessToken | None = None) -> dict[str, Any]:
    """The ``/check`` body for one ``tools/call``; a caller authenticated with a JWT is the
    ``actor_id`` (its ``sub``) and ``mcp_client_id``."""
    server = config.servers[route.server]
    rule = server.tools.get(route.tool.name, ToolRule())
    context = {**config.stage0.context, **rule.context, "mcp_server": route.server,
               "mcp_tool": route.tool.name, "active_mcp_servers": sorted(config.servers)}
    if caller is not None and (caller.claims or {}).get(AUTH_KIND) == JWT_AUTH:
        if caller.subject:
            context["actor_id"] = caller.subject
        context["mcp_client_id"] = caller.client_id
    goal = rule.goal or (f"Run the tool `{route.tool.name}` of the MCP server `{route.server}` "
                         "with the given arguments")
    return build_request(
        route.qualified, arguments, goal=goal,
        side_effects=side_effects_for(server, rule, route.tool, config.annotations),
        constraints=_union(server.constraints, rule.constraints), context=context,
        success_criteria=rule.success_criteria or None, environment=config.stage0.environment)


# -- the decision ----------------------------------------------------------------------------


async def authorize(client: AsyncClient, body: dict[str, Any],
                    wait_for_approval: float = 0.0) -> CheckResult:
    """Return the ALLOW result (its execution token verified and consumed) or raise
    :class:`ActionDenied` / :class:`ActionDeferred` — the SDK guard's rules
    (:func:`stage0.sdk.guard.enforce_async`)."""
    return await enforce_async(client, body, wait_for_approval or None)


def build_routes(config: GatewayConfig,
                 listed: Mapping[str, Sequence[types.Tool]]) -> dict[str, Route]:
    """The routing table: exported name -> (server, downstream tool).

    Raises :class:`ConfigError` when two tools would be exported under the same name.
    """
    routes: dict[str, Route] = {}
    for name, tools in listed.items():
        spec = config.servers[name]
        for tool in tools:
            rule = spec.tools.get(tool.name, ToolRule())
            exported = export_name(name, tool.name, prefix=spec.prefix,
                                   names=config.tool_names, export_as=rule.export_as)
            other = routes.get(exported)
            if other is not None:
                raise ConfigError(
                    f"two downstream tools are exported as `{exported}`: `{other.qualified}` "
                    f"and `{name}{QUALIFIED_SEPARATOR}{tool.name}`; set `prefix: true` on "
                    f"`{name}` or `{other.server}`, or give one of them "
                    f"`servers.<server>.tools.<tool>.export_as`")
            routes[exported] = Route(exported, name, tool)
    return routes


# -- the gateway -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModernCall:
    """A ``tools/call`` from a client on MCP 2026-07-28, which may be answered with
    ``input_required``: the request state it sent back (opened by the SDK boundary), its answer
    to the gateway's elicitation, and the elicitation modes it declared."""

    state: PendingApproval | None = None
    answer: str | None = None
    modes: frozenset[str] = frozenset()


def call_digest(body: Mapping[str, Any], caller: AccessToken | None) -> str:
    """SHA-256 of a call's ``/check`` body and its caller: what a deferred call is known by."""
    principal = list(principal_components(caller)) if caller is not None else None
    return hashlib.sha256(json.dumps({"body": body, "caller": principal}, sort_keys=True,
                                     default=repr).encode()).hexdigest()


class Gateway:
    """Downstream sessions, the Stage0 client and the MCP server that ties them together.

    ``async with Gateway(config) as gateway: await gateway.serve_stdio()``.
    ``audience`` names this gateway in the request states it seals (its resource URL over
    HTTP); a state sealed by another gateway with the same keys is refused.
    """

    def __init__(self, config: GatewayConfig, *, client: AsyncClient | None = None,
                 errlog: TextIO | None = None, audience: str = "stage0-mcp-proxy") -> None:
        self.config = config
        settings = config.stage0
        self.client = client or AsyncClient(settings.base_url, settings.api_key,
                                            timeout=settings.timeout)
        self._owns_client = client is None
        self.client._http.event_hooks["request"].append(_forward_trace)  # #16 item 2
        self._errlog = errlog if errlog is not None else sys.stderr
        self._stack = AsyncExitStack()
        self.sessions: dict[str, ClientSession] = {}
        self.routes: dict[str, Route] = {}
        self.awaiting: dict[str, str] = {}
        """The approval each deferred call waits for, by :func:`call_digest`: the same call
        again retries with it. Kept in memory, for the last 1024 calls."""
        self._callers: dict[str, AsyncClient] = {}
        self._callers_http: httpx.AsyncClient | None = None
        self.server: Server[Any] = Server(
            "stage0-mcp-proxy", version=__version__,
            instructions="Every tool call is authorized by Stage0 before it is forwarded.",
            on_list_tools=self._on_list_tools, on_call_tool=self._on_call_tool)
        self.server.middleware.append(RequestStateBoundary(
            request_state_security(config.input_required.ttl), default_audience=audience))

    async def _connect(self, name: str, spec: DownstreamServer,
                       headers: dict[str, str]) -> ClientSession:
        if spec.url is not None:
            http = await self._stack.enter_async_context(
                create_mcp_http_client(headers=headers or None))
            read, write = await self._stack.enter_async_context(
                streamable_http_client(spec.url, http_client=http))
        else:
            assert spec.command is not None
            params = StdioServerParameters(
                command=spec.command, args=spec.args, cwd=spec.cwd,
                env={k: os.path.expandvars(v) for k, v in spec.env.items()} or None)
            read, write = await self._stack.enter_async_context(
                stdio_client(params, errlog=self._errlog))
        session = await self._stack.enter_async_context(ClientSession(read, write))
        with anyio.fail_after(spec.connect_timeout):
            await session.initialize()
        return session

    async def __aenter__(self) -> Gateway:
        try:
            headers = {name: expand_headers(name, spec.headers)  # every one, before starting any
                       for name, spec in self.config.servers.items()}
            for name, spec in self.config.servers.items():
                self.sessions[name] = await self._connect(name, spec, headers[name])
            await self.refresh()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await self._stack.aclose()
        finally:
            if self._callers_http is not None:
                await self._callers_http.aclose()
            if self._owns_client:
                await self.client.aclose()

    def client_for(self, caller: AccessToken | None) -> AsyncClient:
        """The Stage0 client a call is checked with: the caller's own Stage0 key when it
        authenticated with one, else the gateway's."""
        if caller is None or (caller.claims or {}).get(AUTH_KIND) != API_KEY_AUTH:
            return self.client
        key = hashlib.sha256(caller.token.encode()).hexdigest()
        client = self._callers.get(key)
        if client is None:
            if self._callers_http is None:
                self._callers_http = httpx.AsyncClient(
                    base_url=self.client.base_url, timeout=self.config.stage0.timeout,
                    event_hooks={"request": [_forward_trace]})  # #16 item 2
            client = AsyncClient(self.client.base_url, caller.token,
                                 timeout=self.config.stage0.timeout,
                                 http_client=self._callers_http)
            self._callers = {**dict(list(self._callers.items())[-255:]), key: client}
        return client

    async def _list_downstream(self, session: ClientSession) -> list[types.Tool]:
        tools: list[types.Tool] = []
        cursor: str | None = None
        while True:
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            tools += page.tools
            cursor = page.next_cursor
            if not cursor:
                return tools

    async def refresh(self) -> dict[str, Route]:
        """List every downstream server's tools and rebuild the routing table."""
        listed = {name: await self._list_downstream(session)
                  for name, session in self.sessions.items()}
        self.routes = build_routes(self.config, listed)
        return self.routes

    def exported_tools(self) -> list[types.Tool]:
        return [route.tool.model_copy(update={"name": route.exported})
                for route in self.routes.values()]

    async def _on_list_tools(self, ctx: ServerRequestContext[Any],
                             params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        await self.refresh()
        return types.ListToolsResult(tools=self.exported_tools())

    async def _on_call_tool(self, ctx: ServerRequestContext[Any],
                            params: types.CallToolRequestParams,
                            ) -> types.CallToolResult | types.InputRequiredResult:
        modern = None
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and self.config.input_required.enabled:
            state = (PendingApproval.load(params.request_state)
                     if params.request_state is not None else None)
            modern = ModernCall(state, elicitation_answer(params),
                                frozenset(elicitation_modes(ctx)))
        traced = _TRACE.set(trace_headers(params.meta))  # #16 item 2
        try:
            return await self.call_tool(params.name, params.arguments or {},
                                        caller=access_token_of(ctx), modern=modern)
        finally:
            _TRACE.reset(traced)

    async def call_tool(self, name: str, arguments: dict[str, Any], *,
                        caller: AccessToken | None = None, modern: ModernCall | None = None,
                        ) -> types.CallToolResult | types.InputRequiredResult:
        """Authorize one call with Stage0 and forward it only on ALLOW.

        ``caller``: the bearer token the HTTP transport authenticated; ``modern``: set for a
        client on MCP 2026-07-28, which gets ``input_required`` while an approval is pending.
        """
        route = self.routes.get(name)
        if route is None:
            await self.refresh()  # never forward a tool whose annotations were not read
            route = self.routes.get(name)
        if route is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool `{name}`")
        body = check_request(self.config, route, arguments, caller)
        call = call_digest(body, caller)
        settings = self.config.input_required
        wait = self.config.stage0.wait_for_approval
        state = modern.state if modern is not None else None
        if state is not None:
            if state.call != call:  # the SDK boundary bound tool and arguments; this the rest
                raise MCPError(types.INVALID_PARAMS, "Invalid or expired requestState",
                               {"reason": "invalid_request_state"})
            self.awaiting.pop(call, None)
            waited: str | None = state.approval_id
            if modern is not None and modern.answer in ("decline", "cancel"):
                log.info("DEFER %s: the user chose %s for approval %s", route.qualified,
                         modern.answer, waited)
                return declined_result(route.qualified, state.approval_id, modern.answer)
            wait = settings.poll_seconds
        else:
            waited = self.awaiting.pop(call, None)
            if modern is not None:
                wait = 0.0  # answer at once: input_required brings the client back
        if waited:
            body["context"]["approval_id"] = waited
        try:
            decision = await authorize(self.client_for(caller), body, wait)
        except ActionBlocked as exc:
            return self._blocked(exc, route, call, waited, modern)
        log.info("ALLOW %s request_id=%s: forwarding", route.qualified, decision.request_id)
        spec = self.config.servers[route.server]
        try:
            result = await self.sessions[route.server].call_tool(
                route.tool.name, arguments, read_timeout_seconds=spec.call_timeout)
        except MCPError:
            raise
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError,
                TimeoutError) as exc:
            text = (f"Stage0 allowed the call (request_id {decision.request_id}) but the "
                    f"downstream server `{route.server}` failed: {type(exc).__name__}: {exc}")
            return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                        is_error=True)
        return result

    def _blocked(self, exc: ActionBlocked, route: Route, call: str, waited: str | None,
                 modern: ModernCall | None,
                 ) -> types.CallToolResult | types.InputRequiredResult:
        approval = exc.approval or {}
        approval_id = approval.get("approval_id")
        follow = (isinstance(exc, ActionDeferred) and bool(approval_id)
                  and not approval_ended(exc.result, waited))
        log.info("%s %s request_id=%s issues=%s", exc.result.verdict, route.qualified,
                 exc.request_id, ",".join(exc.result.issue_codes))
        if follow and modern is not None and approval.get("status") == "pending":
            settings = self.config.input_required
            round_ = modern.state.round + 1 if modern.state is not None else 1
            if round_ <= settings.max_rounds:
                elicitation = (approval_elicitation(exc, route.qualified, set(modern.modes))
                               if round_ == 1 and settings.elicit else None)
                return input_required_result(
                    exc, route.qualified, PendingApproval(str(approval_id), call, round_),
                    elicitation)
        if follow:
            self.awaiting = {**dict(list(self.awaiting.items())[-1023:]), call: str(approval_id)}
        return blocked_result(exc, route.qualified)

    async def serve(self, read: Any, write: Any) -> None:
        """Serve one MCP connection over the given streams."""
        await self.server.run(read, write, self.server.create_initialization_options())

    async def serve_stdio(self) -> None:
        """Serve MCP over this process's stdin/stdout (fd 1 goes to stderr meanwhile)."""
        async with stdio_server() as (read, write):
            await self.serve(read, write)

    async def serve_http(self, listen: str) -> None:
        """Serve MCP over streamable HTTP at ``listen`` (``HOST:PORT``) until interrupted."""
        await mcp_http.serve_http(self.server, self.config.http, listen, self.client.base_url)


async def run_gateway(config: GatewayConfig, listen: str | None = None) -> None:
    """Connect to the downstream servers and serve MCP: on stdio until stdin closes, or over
    streamable HTTP when ``listen`` (or ``http.listen``) is given."""
    listen = listen or config.http.listen
    audience = "stage0-mcp-proxy"
    if listen:
        host, port = mcp_http.parse_listen(listen)
        audience = mcp_http.resource_url(config.http, host, port)
    async with Gateway(config, audience=audience) as gateway:
        log.info("stage0 mcp-proxy: %d tools from %s; Stage0 at %s", len(gateway.routes),
                 ", ".join(gateway.sessions), gateway.client.base_url)
        separator = config.tool_names.separator
        for route in gateway.routes.values():
            plain = (f"{route.server}{separator}{route.tool.name}"
                     if config.servers[route.server].prefix else route.tool.name)
            if route.exported != plain:
                log.info("`%s` is exported as `%s`", route.qualified, route.exported)
        if listen:
            await gateway.serve_http(listen)
        else:
            await gateway.serve_stdio()


__all__ = ["DEFAULT_NAME_SEPARATOR", "MCP_TOOL_NAME", "META_KEY", "OPENAI_FUNCTION_NAME",
           "QUALIFIED_SEPARATOR", "AnnotationEffects", "ConfigError", "DownstreamServer",
           "Gateway", "GatewayConfig", "ModernCall", "Route", "Stage0Settings", "ToolNames",
           "ToolRule", "annotation_effects", "authorize", "blocked_result", "build_routes",
           "call_digest", "check_request", "export_name", "load_config", "run_gateway",
           "side_effects_for", "single_server_config"]
