"""What a check answers on the client side: :class:`CheckResult`, and the fail-closed reading of
an HTTP answer (:func:`interpret`): anything but a well-formed verdict is a DENY."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, cast

import orjson

from stage0.contract import CODES
from stage0.contract.response import Decision, ResponseBody, failed_body

DEFAULT_BASE = "http://127.0.0.1:8000"
_VERDICTS = {"ALLOW": "GO", "DEFER": "DEFER", "DENY": "NO_GO"}


class StageZeroError(RuntimeError):
    """A non-decision call (usage, approvals, tokens) failed; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int | None = None,
                 body: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = dict(body or {})

    @property
    def code(self) -> str | None:
        code = self.body.get("code")
        return code if isinstance(code, str) else None


class TokenRejected(StageZeroError):
    """An execution token failed offline verification or could not be consumed."""


class CheckResult(Decision):
    """A decision as the client holds it: the one response type
    (:class:`stage0.contract.response.Decision`) plus how it arrived (``status_code``: 200 for
    a decision, the HTTP status of a refusal, 0 when no answer came; ``retry_after``).

    ``allowed`` is true only for a well-formed ALLOW/GO. A result the SDK made itself because no
    decision came (transport failure, refusal, malformed answer) has the engine's fail-closed
    shape, with ``request_id`` and ``policy_version`` ``None`` when the server named neither.
    """

    __slots__ = ("retry_after", "status_code")

    def __init__(self, body: Mapping[str, Any], status_code: int = 200,
                 retry_after: int | None = None) -> None:
        # A body from the wire is only checked for its verdict (``interpret``); the accessors
        # read the rest defensively.
        super().__init__(cast(ResponseBody, body))
        self.status_code = status_code
        self.retry_after = retry_after

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CheckResult):
            return NotImplemented
        return (self.body, self.status_code, self.retry_after) == (
            other.body, other.status_code, other.retry_after)

    __hash__ = None  # type: ignore[assignment]  # mutable body: not hashable


def failed_closed(code: str, message: str, *, status: int = 0, request_id: str | None = None,
                  retry_after: int | None = None, extra: Mapping[str, Any] | None = None,
                  ) -> CheckResult:
    """The fail-closed result of a call that brought no decision: the engine's shape
    (:func:`stage0.contract.response.failed_body`) with the one issue that says why."""
    body: dict[str, Any] = dict(failed_body(CODES[code].issue(message), request_id="",
                                            now=time.time()))
    body.update(request_id=request_id, policy_version=None, policy_pack_version=None)
    body.update(extra or {})
    return CheckResult(body, status, retry_after)


def interpret(status: int, content: bytes, request_id: str | None,
              base_url: str | None = None) -> CheckResult:
    """Turn an HTTP answer to /check into a result, failing closed on anything unexpected.

    A relative ``approval.approval_url`` (a server without ``STAGE0_PUBLIC_URL``) is made
    absolute against ``base_url``, the address this client reached the server at."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return failed_closed("SERVICE_UNAVAILABLE",
                             f"HTTP {status} with a body that is not JSON", status=status,
                             request_id=request_id)
    if not isinstance(body, dict):
        return failed_closed("SERVICE_UNAVAILABLE", f"HTTP {status} with a non-object body",
                             status=status, request_id=request_id)
    rid = body.get("request_id") if isinstance(body.get("request_id"), str) else request_id
    if status == 200:
        verdict, decision = body.get("verdict"), body.get("decision")
        if verdict not in _VERDICTS or not (
            decision == _VERDICTS[verdict] or (verdict == "DENY" and decision == "ERROR")
        ):
            return failed_closed("SERVICE_UNAVAILABLE",
                                 f"the answer has an unknown verdict/decision "
                                 f"`{verdict}`/`{decision}`", status=status, request_id=rid)
        approval = body.get("approval")
        link = approval.get("approval_url") if isinstance(approval, dict) else None
        if base_url and isinstance(link, str) and link.startswith("/"):
            approval["approval_url"] = base_url.rstrip("/") + link  # type: ignore[index]
        return CheckResult(body, 200)
    retry = body.get("retry_after_seconds")
    detail = str(body.get("detail") or f"HTTP {status}")
    if status >= 500:
        return failed_closed("SERVICE_UNAVAILABLE", f"HTTP {status}: {detail}", status=status,
                             request_id=rid, extra={"detail": detail})
    return failed_closed("SERVICE_REFUSED", f"HTTP {status}: {detail}", status=status,
                         request_id=rid, retry_after=retry if isinstance(retry, int) else None,
                         extra={k: v for k, v in body.items() if k in ("errors", "detail")})


def request_body(goal: str | Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """A /check body from a goal and fields, or a whole request mapping."""
    if isinstance(goal, Mapping):
        return {**goal, **{k: v for k, v in fields.items() if v is not None}}
    return {"goal": goal, **{k: v for k, v in fields.items() if v is not None}}
