"""What a check answers on the client side: :class:`CheckResult`, and the fail-closed reading of
an HTTP answer (:func:`interpret`): anything but a well-formed verdict is a DENY."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from stage0.contract import CODES

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


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A decision. ``allowed`` is true only for a well-formed ALLOW/GO."""

    body: dict[str, Any]
    status_code: int = 200
    retry_after: int | None = None

    @property
    def verdict(self) -> str:
        return str(self.body.get("verdict", "DENY"))

    @property
    def decision(self) -> str:
        return str(self.body.get("decision", "ERROR"))

    @property
    def allowed(self) -> bool:
        return self.verdict == "ALLOW" and self.decision == "GO"

    @property
    def request_id(self) -> str | None:
        value = self.body.get("request_id")
        return value if isinstance(value, str) else None

    @property
    def policy_version(self) -> str | None:
        value = self.body.get("policy_version")
        return value if isinstance(value, str) else None

    @property
    def issues(self) -> list[dict[str, Any]]:
        issues = self.body.get("issues")
        return issues if isinstance(issues, list) else []

    @property
    def issue_codes(self) -> list[str]:
        return [str(i.get("code")) for i in self.issues if isinstance(i, dict)]

    @property
    def approval(self) -> dict[str, Any] | None:
        value = self.body.get("approval")
        return value if isinstance(value, dict) else None

    @property
    def execution_token(self) -> str | None:
        value = self.body.get("execution_token")
        return value if isinstance(value, str) else None

    @property
    def action_digest(self) -> str | None:
        value = self.body.get("action_digest")
        return value if isinstance(value, str) else None


def failed_closed(code: str, message: str, *, status: int = 0, request_id: str | None = None,
                  retry_after: int | None = None, extra: Mapping[str, Any] | None = None,
                  ) -> CheckResult:
    issue = CODES[code].issue(message).to_dict()
    body = {"verdict": "DENY", "decision": "ERROR", "request_id": request_id,
            "policy_version": None, "issues": [issue], "reason": f"{code}: {message}",
            **(extra or {})}
    return CheckResult(body, status, retry_after)


def interpret(status: int, content: bytes, request_id: str | None) -> CheckResult:
    """Turn an HTTP answer to /check into a result, failing closed on anything unexpected."""
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
