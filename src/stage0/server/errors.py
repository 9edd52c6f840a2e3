"""Every HTTP refusal in one shape, ``{"detail", "request_id", "code", ...}`` (CONTRACT §8
allows the extra fields), and the one catalogue of the codes (docs/http.md lists them).

The HTTP layer's own refusals raise :class:`ApiError`; the pipeline's answers (``/check``,
approvals, tokens) come back as an ``Outcome`` and :func:`with_code` names the ones that do not
carry a ``code`` yet, from their status (and, for the two kinds of 402 and of 429, their
``detail``, which CONTRACT §8 fixes).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stage0.engine.evaluate import uuid4_id
from stage0.server import logs, metrics
from stage0.server.jobs import Outcome, error_body

log = logging.getLogger("stage0.server")


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    status: int
    meaning: str


def _catalogue(*codes: tuple[str, int, str]) -> dict[str, ErrorCode]:
    return {c: ErrorCode(c, s, m) for c, s, m in codes}


CODES: dict[str, ErrorCode] = _catalogue(
    # -- every route ----------------------------------------------------------------------
    ("API_KEY_INVALID", 401, "missing, invalid or revoked API key"),
    ("SCOPE_MISSING", 403, "the key lacks the scope the route needs"),
    ("NOT_FOUND", 404, "no such route"),
    ("METHOD_NOT_ALLOWED", 405, "the route does not take this method"),
    ("REQUEST_INVALID", 422, "the request (body, path or query) does not match the contract"),
    ("CONTENT_TYPE_UNSUPPORTED", 415, "the body is declared as something other than JSON "
                                      "(`application/json`, `application/*+json`, UTF-8)"),
    ("AUTH_BACKOFF", 429, "too many failed authentications from this source or for this key "
                          "(`retry_after_seconds`)"),
    ("FAIL_CLOSED", 503, "the service cannot decide (the decision log is unavailable); the "
                         "body still says `verdict: DENY`"),
    ("INTERNAL_ERROR", 500, "an unexpected error (logged)"),
    ("METRICS_TOKEN_INVALID", 401, "`/metrics` needs the bearer token of "
                                   "`STAGE0_METRICS_TOKEN` (`STAGE0_METRICS_AUTH=token`)"),
    # -- POST /check ----------------------------------------------------------------------
    ("PRO_PLAN_REQUIRED", 402, "`pro: true` on a plan without it"),
    ("MONTHLY_QUOTA_EXCEEDED", 402, "the key's monthly quota is used up"),
    ("DAILY_LIMIT_EXCEEDED", 429, "the key's daily limit is used up (`retry_after_seconds`)"),
    ("RATE_LIMIT_EXCEEDED", 429, "the key's per-minute limit is used up "
                                 "(`retry_after_seconds`)"),
    ("REQUEST_ID_REUSED", 409, "an `X-Request-Id` reused with a different body"),
    # -- the decision log -----------------------------------------------------------------
    ("DECISION_NOT_FOUND", 404, "no such decision in the key's tenant"),
    # -- approvals and break-glass (the pipeline's refusals, docs/approvals.md) -----------
    ("APPROVAL_NOT_FOUND", 404, "no such approval request in the key's tenant"),
    ("APPROVER_SCOPE_MISSING", 403, "the key lacks the `approve` scope"),
    ("SELF_APPROVAL", 403, "the key (or its principal) asked for the action itself"),
    ("APPROVER_ROLE_NOT_ELIGIBLE", 403, "the key holds none of the eligible roles"),
    ("APPROVAL_EXPIRED", 409, "the approval request has expired"),
    ("APPROVAL_ALREADY_DECIDED", 409, "the approval request is no longer pending"),
    ("APPROVAL_ALREADY_VOTED", 409, "this principal has already voted"),
    ("APPROVER_MFA_REQUIRED", 401, "the request needs a TOTP code"),
    ("APPROVER_MFA_INVALID", 403, "the TOTP code is wrong or was already used"),
    ("APPROVER_MFA_NOT_ENROLLED", 403, "approver MFA is required and the key has no TOTP"),
    ("APPROVER_MFA_LOCKED", 429, "too many wrong TOTP codes (`retry_after_seconds`)"),
    ("BREAK_GLASS_DISABLED", 403, "the pack does not allow break-glass"),
    ("BREAK_GLASS_ROLE_NOT_ELIGIBLE", 403, "the key holds none of `break_glass.roles`"),
    ("BREAK_GLASS_REASON_REQUIRED", 422, "the reason is missing or shorter than the pack asks"),
    ("BREAK_GLASS_NOT_APPLICABLE", 409, "the decision was not held by a window or freeze"),
    ("BREAK_GLASS_ALREADY_DECLARED", 409, "a break-glass approval exists for the decision"),
    # -- execution tokens -----------------------------------------------------------------
    ("TOKEN_SCOPE_MISSING", 403, "the key lacks the `check` scope"),
    ("TOKEN_INVALID", 401, "bad signature, unknown signing key, or expired"),
    ("TOKEN_WRONG_TENANT", 401, "the token was issued to another tenant"),
    ("TOKEN_DIGEST_MISMATCH", 401, "the action digest is not the token's"),
    ("TOKEN_ALREADY_CONSUMED", 409, "the token has already been used"),
)

_BY_STATUS = {401: "API_KEY_INVALID", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
              422: "REQUEST_INVALID", 500: "INTERNAL_ERROR", 503: "FAIL_CLOSED"}
"""The code of an error that names none: the HTTP stack's generic ones (an unknown route, a
wrong method, a body FastAPI refuses). Every refusal Stage0 makes names its own code."""


def code_for(status: int) -> str:
    """The catalogued code of an error with ``status`` that names none."""
    return _BY_STATUS.get(status) or f"HTTP_{status}"


def with_code(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (an error of ``status``) with its ``code``: the one it has, else the
    catalogue's."""
    if "code" not in body:
        body["code"] = code_for(status)
    return body


def refused(outcome: Outcome, route: str) -> bytes:
    """A pipeline answer other than 200: counted when it is a refusal, named by its code."""
    if outcome.status in metrics.REFUSAL_STATUSES:
        metrics.count_refusal(outcome.status, route)
    body = outcome.body if isinstance(outcome.body, dict) else orjson.loads(outcome.body)
    if isinstance(body, dict) and "detail" in body:
        with_code(outcome.status, body)
    return orjson.dumps(body)


class ApiError(Exception):
    """A refusal raised by a route: answered as ``{"detail", "request_id", "code", ...}``."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


def request_id(header: str | None) -> tuple[str, bool]:
    """The client's ``X-Request-Id`` when it is a valid UUID (and ``True``), else a new id."""
    if header:
        try:
            return str(uuid.UUID(header.strip())), True
        except ValueError:
            pass
    return uuid4_id(), False


def route_of(request: Request) -> str:
    """The template of the route that answered ``request`` (a bounded metrics label)."""
    route = request.scope.get("route")
    return str(getattr(route, "path", None) or "(unrouted)")


def error_response(request: Request, status: int, code: str, detail: str,
                   **extra: Any) -> JSONResponse:
    """The refusal as a response, counted in ``stage0_refused_total`` when it is one."""
    if status in metrics.REFUSAL_STATUSES:
        metrics.count_refusal(status, route_of(request))
    rid, sent = request_id(request.headers.get("x-request-id"))
    if not sent and logs.ENABLED:  # #16: the id this request's log lines already carry
        rid = logs.REQUEST_ID.get() or rid
    headers = {"x-request-id": rid}
    if "retry_after_seconds" in extra:
        headers["retry-after"] = str(extra["retry_after_seconds"])
    return JSONResponse(error_body(status, detail, rid, code=code, **extra), status,
                        headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.code, exc.detail, **exc.extra)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(request, exc.status_code, code_for(exc.status_code), str(exc.detail))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FastAPIValidationError)
    errors = [
        {"field": ".".join(str(p) for p in e["loc"][1:]) or "(request)",
         "message": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    detail = "; ".join(f"`{e['field']}`: {e['message']}" for e in errors)
    return error_response(request, 422, "REQUEST_INVALID", f"invalid request: {detail}",
                          errors=errors)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error", exc_info=exc)
    return error_response(request, 500, "INTERNAL_ERROR", "Internal error")


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` in the one shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(FastAPIValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
