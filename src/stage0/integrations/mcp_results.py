"""What the MCP gateway answers for a call Stage0 did not allow.

- :func:`blocked_result`: DENY and DEFER (and every failure) as an MCP tool error, for every
  client and protocol revision; the decision is in the text and in ``_meta[META_KEY]``, with the
  approval id and, when Stage0 gives one, the console URL where an approver acts
  (``approval.approval_url``).
- For clients on MCP 2026-07-28, a DEFER that waits for an approval is instead an
  ``input_required`` result (:func:`input_required_result`) carrying a *request state*: the
  approval id and the call's digest, sealed by the SDK's ``RequestStateBoundary`` (AES-256-GCM,
  bound to the method, the tool name, the arguments' digest, the gateway, the authenticated
  caller and an expiry). The client sends the same call again with that state; the gateway opens
  it and checks again with ``context.approval_id``. A state that was altered, has expired, or
  was minted for another call, caller or gateway is refused with ``-32602 Invalid or expired
  requestState`` — never an ALLOW. When the client can elicit, the first round also asks its
  human (an ``elicitation/create`` in the result: the console URL in URL mode, else a form with
  the approval id).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from mcp import types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, principal_components
from mcp.server.context import ServerRequestContext
from mcp.server.request_state import RequestStateSecurity
from mcp.shared.exceptions import MCPError

from stage0.integrations.mcp_config import META_KEY
from stage0.sdk.guard import ActionBlocked

#: Comma-separated secrets (each at least 32 bytes) that seal request states: the first seals,
#: all open (rotation). Unset: a key made at start-up, so states do not survive a restart.
STATE_KEYS_ENV = "STAGE0_MCP_REQUEST_STATE_KEYS"
STATE_VERSION = 1
#: The key of the gateway's elicitation in ``inputRequests`` / ``inputResponses``.
APPROVAL_INPUT = "stage0_approval"


def approval_url(exc: ActionBlocked) -> str | None:
    """The console page of the call's approval request, as Stage0 gives it
    (``approval.approval_url``): an absolute URL when Stage0 knows its public URL, else its
    path on Stage0. The gateway never makes one up."""
    url = (exc.approval or {}).get("approval_url")
    return url if isinstance(url, str) and url else None


def absolute_url(url: str | None) -> str | None:
    """``url`` when it is an absolute ``http(s)`` URL (one a browser can open), else ``None``."""
    return url if url and url.startswith(("https://", "http://")) else None


def decision_meta(exc: ActionBlocked, tool: str) -> dict[str, Any]:
    """The decision as ``_meta[META_KEY]`` carries it."""
    result = exc.result
    approval = exc.approval or {}
    return {
        "verdict": result.verdict, "decision": result.decision, "request_id": exc.request_id,
        "policy_version": exc.policy_version, "issues": result.issue_codes,
        "approval_id": approval.get("approval_id"), "approval_status": approval.get("status"),
        "approval_url": approval_url(exc), "reason": result.body.get("reason"), "tool": tool}


def blocked_result(exc: ActionBlocked, tool: str) -> types.CallToolResult:
    """DENY/DEFER as an MCP tool error the agent (and its user) can act on.

    The decision is in the text (for the model) and in ``_meta[META_KEY]`` (for a program);
    never in ``structuredContent``, which a client validates against the tool's
    ``outputSchema`` (the TypeScript SDK does even for ``isError`` results, and refuses the
    whole result with -32602 when it does not match).
    """
    result = exc.result
    approval = exc.approval or {}
    approval_id = approval.get("approval_id")
    codes = result.issue_codes
    lines = [f"Stage0 {result.verdict} ({result.decision}): the call to `{tool}` was not run.",
             f"reason: {result.body.get('reason') or '-'}",
             f"request_id: {exc.request_id}",
             f"policy_version: {exc.policy_version}",
             f"issues: {', '.join(codes) if codes else '-'}"]
    if str(exc) != f"{result.verdict}: {result.body.get('reason') or ', '.join(codes)}":
        lines.append(f"detail: {exc}")
    if approval_id:
        lines.append(f"approval_id: {approval_id} (status: {approval.get('status')}); "
                     "retry the same call once it is approved")
        url = approval_url(exc)
        if url:
            lines.append(f"approval_url: {url} (where an approver approves or rejects it)")
    for issue in exc.issues:
        if isinstance(issue, dict) and issue.get("message"):
            lines.append(f"- {issue.get('code')}: {issue.get('message')}")
    return types.CallToolResult(content=[types.TextContent(type="text", text="\n".join(lines))],
                                is_error=True, _meta={META_KEY: decision_meta(exc, tool)})


# -- the caller and the request state --------------------------------------------------------


def access_token_of(ctx: ServerRequestContext[Any, Any]) -> AccessToken | None:
    """The bearer token the HTTP transport authenticated for this request (``None`` on stdio)."""
    scope = getattr(ctx.request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    return user.access_token if isinstance(user, AuthenticatedUser) else None


def caller_principal(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """What a request state is bound to: the caller's (client id, issuer, subject)."""
    token = access_token_of(ctx)
    return None if token is None else json.dumps(principal_components(token))


def request_state_security(ttl: float, environ: dict[str, str] | None = None,
                           ) -> RequestStateSecurity:
    """The SDK's sealing policy, with the keys of :data:`STATE_KEYS_ENV` (else ephemeral)."""
    env = os.environ if environ is None else environ
    keys = [k.strip() for k in (env.get(STATE_KEYS_ENV) or "").split(",") if k.strip()]
    return RequestStateSecurity(keys=keys or [os.urandom(32)], ttl=ttl,
                                bind_principal=caller_principal)


@dataclass(frozen=True)
class PendingApproval:
    """The plaintext of a request state (sealed by the SDK boundary before it leaves)."""

    approval_id: str
    call: str
    """SHA-256 of the call's ``/check`` body and its caller: the state is for this call only."""
    round: int

    def dump(self) -> str:
        return json.dumps({"v": STATE_VERSION, "approval_id": self.approval_id,
                           "call": self.call, "round": self.round}, separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> PendingApproval:
        """Raises ``MCPError(-32602)`` for anything this gateway did not write."""
        try:
            raw = json.loads(text)
            state = cls(str(raw["approval_id"]), str(raw["call"]), int(raw["round"]))
            ok = raw.get("v") == STATE_VERSION
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise MCPError(types.INVALID_PARAMS, "Invalid or expired requestState",
                           {"reason": "invalid_request_state"})
        return state


def elicitation_modes(ctx: ServerRequestContext[Any, Any]) -> set[str]:
    """The elicitation modes the client declared (an empty ``elicitation`` object is form)."""
    capabilities = ctx.session.client_capabilities
    elicitation = capabilities.elicitation if capabilities else None
    if elicitation is None:
        return set()
    modes = {"url"} if elicitation.url is not None else set()
    if elicitation.form is not None or elicitation.url is None:
        modes.add("form")
    return modes


def approval_elicitation(exc: ActionBlocked, tool: str,
                         modes: set[str]) -> types.ElicitRequest | None:
    """Ask the human to get the call approved: the console URL (URL mode) when the client
    supports it and Stage0 gave an absolute one, else a form with nothing to fill in that names
    the approval and where to decide it."""
    approval_id = str((exc.approval or {}).get("approval_id"))
    url = absolute_url(approval_url(exc))
    message = (f"Stage0 holds the call to `{tool}` until an approver approves it "
               f"(approval {approval_id}). ")
    if url and "url" in modes:
        return types.ElicitRequest(params=types.ElicitRequestURLParams(
            message=message + "Open the link to see and decide the request; accept once it "
                              "is approved.", url=url, elicitation_id=approval_id))
    if "form" in modes:
        page = approval_url(exc)
        where = (f"at {page} on the Stage0 console" if page
                 else f"with `stage0 approvals approve {approval_id}`")
        return types.ElicitRequest(params=types.ElicitRequestFormParams(
            message=message + f"An approver decides it {where}. Accept once it is approved; "
                              "decline to stop waiting.",
            requested_schema={"type": "object", "properties": {}}))
    return None


def input_required_result(exc: ActionBlocked, tool: str, state: PendingApproval,
                          elicitation: types.ElicitRequest | None) -> types.InputRequiredResult:
    """The DEFER as ``input_required``: the state to send back, the decision in ``_meta``."""
    return types.InputRequiredResult(
        request_state=state.dump(),
        input_requests={APPROVAL_INPUT: elicitation} if elicitation is not None else None,
        _meta={META_KEY: decision_meta(exc, tool)})


def elicitation_answer(params: types.CallToolRequestParams) -> str | None:
    """``accept`` / ``decline`` / ``cancel`` when the retry answers the gateway's elicitation."""
    answer = (params.input_responses or {}).get(APPROVAL_INPUT)
    return answer.action if isinstance(answer, types.ElicitResult) else None


def declined_result(tool: str, approval_id: str, action: str) -> types.CallToolResult:
    """The human declined (or dismissed) waiting: the call ends; the approval stays open."""
    text = (f"Stage0 DEFER: the call to `{tool}` was not run: the user chose `{action}` "
            f"instead of waiting for approval {approval_id}, which stays open in Stage0; the "
            "same call again checks it again.")
    meta = {"verdict": "DEFER", "decision": "DEFER", "approval_id": approval_id,
            "approval_status": "pending", "tool": tool, "elicitation": action}
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                is_error=True, _meta={META_KEY: meta})


__all__ = ["APPROVAL_INPUT", "STATE_KEYS_ENV", "PendingApproval", "absolute_url",
           "access_token_of",
           "approval_elicitation", "approval_url", "blocked_result", "caller_principal",
           "decision_meta", "declined_result", "elicitation_answer", "elicitation_modes",
           "input_required_result", "request_state_security"]
