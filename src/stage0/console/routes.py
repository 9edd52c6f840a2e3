"""The operator console at ``/console``: sign-in, approval inbox, decision explorer, policy.

Server-rendered HTML (Jinja2, autoescaped) with htmx for partial updates; every asset is served
from ``/console/static`` (no CDN). Reads use the same store helpers as the JSON API; approving
and rejecting go through the decision pipeline exactly like ``POST /v1/approvals/{id}/approve``
(same checks, same hash-chained events), as the session's key.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stage0.console.render import environment
from stage0.console.sessions import (
    ConsoleSettings,
    Session,
    close_session,
    load_session,
    open_session,
)
from stage0.contract.request import parse_instant
from stage0.lifecycle.replay import shadow_report
from stage0.policy import CompiledPolicy, normalize_name
from stage0.server import metrics
from stage0.server.jobs import Job
from stage0.store import approvals as approvals_store
from stage0.store import ledger
from stage0.store.keys import lookup_key

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "stage0_session"
LOGIN_COOKIE = "stage0_login_csrf"
READ_SCOPES = ("approve", "audit:read")
MAX_FORM_BYTES = 16_384
SHADOW_DAYS = 7

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-store",
}

REFUSALS = {
    "SELF_APPROVAL": "You cannot decide this request: you (or your key) requested it. "
                     "Another approver has to decide.",
    "APPROVER_ROLE_NOT_ELIGIBLE": "You are not eligible to decide this request: your key "
                                  "holds none of the roles it needs.",
    "APPROVER_MFA_REQUIRED": "This request needs a TOTP code from your authenticator app.",
    "APPROVER_MFA_INVALID": "That TOTP code is wrong, or was already used. Wait for the next "
                            "code and try again.",
    "APPROVER_MFA_LOCKED": "Too many wrong TOTP codes: approving is locked for this key for "
                           "a while.",
    "APPROVER_MFA_NOT_ENROLLED": "This request needs approver MFA and your key has no TOTP "
                                 "enrolled.",
    "APPROVER_SCOPE_MISSING": "Your key cannot approve (it lacks the approve scope).",
    "APPROVAL_ALREADY_VOTED": "You have already decided on this request.",
    "APPROVAL_ALREADY_DECIDED": "This request has already been decided.",
    "APPROVAL_EXPIRED": "This request has expired.",
    "APPROVAL_NOT_FOUND": "There is no such approval request in your tenant.",
}


class StaticHeaders:
    """Adds the security headers to the responses of a mounted ASGI app (the static files of
    the console and of the API's ``/docs`` page)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"cross-origin-resource-policy", b"same-origin")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, wrapped)


def mount_console(app: FastAPI, state: dict[str, Any],
                  settings: ConsoleSettings | None = None) -> None:
    """Serve the console from ``app`` at ``/console``; ``state`` is the app's (store, policy,
    clock and pipeline are read from it per request)."""
    app.include_router(build_router(state, settings or ConsoleSettings.from_env()))
    app.mount("/console/static", StaticHeaders(StaticFiles(directory=STATIC)),
              name="console-static")


def build_router(state: dict[str, Any], settings: ConsoleSettings) -> APIRouter:
    router = APIRouter(prefix="/console", include_in_schema=False)
    templates = environment()

    # -- plumbing ---------------------------------------------------------------------------

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")) + "/console"

    def secure(request: Request) -> bool:
        return settings.secure_cookie == "always" or request.url.scheme == "https"

    def html(request: Request, template: str, status: int = 200,
             session: Session | None = None, **context: Any) -> HTMLResponse:
        body = templates.get_template(template).render(
            base=base(request), session=session, **context)
        return HTMLResponse(body, status, headers=SECURITY_HEADERS)

    def redirect(request: Request, path: str) -> Response:
        url = base(request) + path
        if request.headers.get("hx-request") == "true":
            return Response(status_code=204, headers={**SECURITY_HEADERS, "hx-redirect": url})
        return RedirectResponse(url, 303, headers=SECURITY_HEADERS)

    def now_us() -> int:
        return int(state["clock"]().timestamp() * 1e6)

    async def current(request: Request) -> Session | None:
        token = request.cookies.get(COOKIE, "")
        if not token:
            return None
        return await run_in_threadpool(load_session, state["store"], token)

    async def form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return {}
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))

    def csrf_ok(session: Session, request: Request, fields: dict[str, str]) -> bool:
        sent = fields.get("csrf_token") or request.headers.get("x-csrf-token") or ""
        return hmac.compare_digest(sent.encode(), session.csrf.encode())

    def forbidden(request: Request, session: Session, what: str) -> HTMLResponse:
        return html(request, "denied.html", 403, session, title="Not allowed", what=what)

    def csrf_refused(request: Request, session: Session) -> HTMLResponse:
        return html(request, "denied.html", 403, session, title="Not allowed",
                    what="The form's security token is missing or stale (CSRF protection). "
                         "Reload the page and try again.")

    # -- sign-in ----------------------------------------------------------------------------

    def login_page(request: Request, status: int = 200, error: str | None = None,
                   notice: str | None = None) -> HTMLResponse:
        token = secrets.token_urlsafe(32)
        response = html(request, "login.html", status, None, title="Sign in", csrf=token,
                        error=error, notice=notice)
        response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/console", httponly=True,
                            samesite="strict", secure=secure(request))
        return response

    @router.get("")
    async def console_root(request: Request) -> Response:
        return redirect(request, "/inbox")

    @router.get("/login")
    async def login_form(request: Request) -> Response:
        if await current(request) is not None:
            return redirect(request, "/inbox")
        notice = {"expired": "Your session has expired or ended; sign in again.",
                  "signed_out": "You are signed out."}.get(request.query_params.get("m", ""))
        return login_page(request, notice=notice)

    @router.post("/login")
    async def login(request: Request) -> Response:
        fields = await form(request)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        sent = fields.get("csrf_token", "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            return login_page(request, 403, "The sign-in form expired (CSRF protection); "
                                            "try again.")
        secret = fields.get("api_key", "").strip()
        key = await run_in_threadpool(lookup_key, state["store"], secret) if secret else None
        if key is None:
            return login_page(request, 401, "This API key is unknown or revoked.")
        if "admin" not in key.scopes and not set(READ_SCOPES) & set(key.scopes):
            return login_page(
                request, 403,
                f"The key `{key.name}` (scopes: {', '.join(key.scopes) or 'none'}) cannot sign "
                "in: the console needs a key with the approve, audit:read or admin scope.")
        if request.cookies.get(COOKIE):  # signing in again replaces the previous session
            await run_in_threadpool(close_session, state["store"], request.cookies[COOKIE])
        token, _ = await run_in_threadpool(open_session, state["store"], key,
                                           settings.session_ttl_s)
        response = RedirectResponse(base(request) + "/inbox", 303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, token, max_age=settings.session_ttl_s, path="/console",
                            httponly=True, samesite="strict", secure=secure(request))
        response.delete_cookie(LOGIN_COOKIE, path="/console", httponly=True,
                               samesite="strict", secure=secure(request))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return redirect(request, "/login?m=expired")
        if not csrf_ok(session, request, await form(request)):
            return csrf_refused(request, session)
        await run_in_threadpool(close_session, state["store"], request.cookies[COOKIE])
        response = redirect(request, "/login?m=signed_out")
        response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict",
                               secure=secure(request))
        return response

    # -- approval inbox ---------------------------------------------------------------------

    def card(approval: dict[str, Any], now: int) -> dict[str, Any]:
        """An approval with what the inbox shows beside it."""
        decision = ledger.get(state["store"], approval["tenant_id"], approval["request_id"])
        issues = [i for i in (decision or {}).get("response", {}).get("issues", [])
                  if i.get("effect") in ("DEFER", "DENY")]
        expires = datetime.fromisoformat(approval["expires_at"].replace("Z", "+00:00"))
        return {**approval, "issues": issues,
                "seconds_left": expires.timestamp() - now / 1e6}

    def pending(tenant: str) -> list[dict[str, Any]]:
        now = now_us()
        items = approvals_store.list_approvals(state["store"], tenant, "pending", now, 100)
        return [card(a, now) for a in items]

    async def inbox_context(session: Session) -> dict[str, Any]:
        items = await run_in_threadpool(pending, session.key.tenant_id)
        return {"items": items, "can_decide": session.can("approve"),
                "now": now_us() / 1e6}

    async def signed_in(request: Request) -> Session | Response:
        session = await current(request)
        if session is None:  # a first visit, or a session that expired or ended
            return redirect(request, "/login?m=expired" if COOKIE in request.cookies
                            else "/login")
        return session

    @router.get("/inbox")
    async def inbox(request: Request) -> Response:
        session = await signed_in(request)
        if not isinstance(session, Session):
            return session
        return html(request, "inbox.html", 200, session, title="Approval inbox", page="inbox",
                    **await inbox_context(session))

    @router.get("/inbox/items")
    async def inbox_items(request: Request) -> Response:
        session = await signed_in(request)
        if not isinstance(session, Session):
            return session
        return html(request, "inbox_items.html", 200, session, **await inbox_context(session))

    async def decide(request: Request, approval_id: str, op: str) -> Response:
        session = await signed_in(request)
        if not isinstance(session, Session):
            return session
        fields = await form(request)
        if not csrf_ok(session, request, fields):
            return csrf_refused(request, session)
        reason = fields.get("reason", "").strip()[:2000]
        totp = fields.get("totp", "").strip()[:12] or None
        status, error, notice = 200, None, None
        if not session.can("approve"):
            status, error = 403, REFUSALS["APPROVER_SCOPE_MISSING"]
        elif not reason:
            status, error = 422, "Give a reason: it is recorded with your decision."
        else:
            payload = {"approval_id": approval_id, "reason": reason, "totp": totp}
            job = Job(secret="", raw=orjson.dumps(payload), request=None, invalid=None,
                      request_id=str(uuid.uuid4()), client_request_id=False,
                      started=time.perf_counter(), op=op, payload=payload,
                      key_id=session.key.id)
            outcome = await state["pipeline"].answer(job)
            body = outcome.body if isinstance(outcome.body, dict) else orjson.loads(outcome.body)
            status = outcome.status
            if status == 200:
                notice = ("Rejected." if op == "reject" else
                          f"Approved ({len(body['approvals'])} of {body['required_approvals']})"
                          f"; the request is now {body['status']}.")
            else:
                error = REFUSALS.get(str(body.get("code")), str(body.get("detail")))
                if body.get("code") == "APPROVER_MFA_LOCKED":
                    error += f" Try again in {body.get('retry_after_seconds')} s."
        if status in metrics.REFUSAL_STATUSES:  # as the API's refusals (docs/http.md)
            metrics.count_refusal(status, request.scope["route"].path)
        now = now_us()
        found = await run_in_threadpool(approvals_store.get_approval, state["store"],
                                        session.key.tenant_id, approval_id, now)
        item = None if found is None else await run_in_threadpool(card, found, now)
        if request.headers.get("hx-request") == "true":
            # htmx swaps 2xx answers only: the refusal is in the fragment (role=alert)
            return html(request, "approval_card.html", 200, session, item=item,
                        approval_id=approval_id, error=error, notice=notice,
                        can_decide=session.can("approve"), now=now / 1e6)
        context = await inbox_context(session)
        return html(request, "inbox.html", status, session, title="Approval inbox",
                    page="inbox", error=error, notice=notice, **context)

    @router.post("/approvals/{approval_id}/approve")
    async def console_approve(request: Request, approval_id: str) -> Response:
        return await decide(request, approval_id, "approve")

    @router.post("/approvals/{approval_id}/reject")
    async def console_reject(request: Request, approval_id: str) -> Response:
        return await decide(request, approval_id, "reject")

    # -- decision explorer ------------------------------------------------------------------

    async def auditor(request: Request) -> Session | Response:
        """The session, when its key may read the log (``audit:read`` or ``admin``)."""
        session = await signed_in(request)
        if isinstance(session, Session) and not session.can("audit:read"):
            return forbidden(request, session, "The decision explorer needs a key with the "
                                               "audit:read (or admin) scope.")
        return session

    @router.get("/decisions")
    async def decisions(request: Request) -> Response:
        session = await auditor(request)
        if not isinstance(session, Session):
            return session
        q = {k: request.query_params.get(k, "").strip() for k in (
            "verdict", "tool", "bucket", "environment", "since", "until", "kind", "cursor")}
        error = None
        items: list[dict[str, Any]] = []
        next_cursor: int | None = None
        try:
            verdict = q["verdict"].upper() if q["verdict"] else None
            if verdict not in (None, "ALLOW", "DEFER", "DENY"):
                raise ValueError("verdict is ALLOW, DEFER or DENY")
            since = parse_instant(q["since"]) if q["since"] else None
            until = parse_instant(q["until"]) if q["until"] else None
            before = int(q["cursor"]) if q["cursor"] else None
            items, next_cursor = await run_in_threadpool(
                lambda: ledger.search(
                    state["store"], session.key.tenant_id, verdict=verdict,
                    tool=normalize_name(q["tool"]) if q["tool"] else None,
                    bucket=q["bucket"] or None, environment=q["environment"] or None,
                    since=since, until=until, limit=50, before_id=before,
                    kind="all" if q["kind"] == "all" else None))
        except ValueError as exc:
            error = f"Check the filters: {exc}"
        older = None
        if next_cursor is not None:
            older = "?" + urlencode({**{k: v for k, v in q.items() if v},
                                     "cursor": str(next_cursor)})
        policy: CompiledPolicy | None = state.get("policy")
        context = {"items": items, "q": q, "error": error, "older": older,
                   "buckets": [b.name for b in policy.buckets] if policy else []}
        status = 422 if error else 200
        if request.headers.get("hx-target") == "results":
            return html(request, "decisions_results.html", status, session, **context)
        return html(request, "decisions.html", status, session, title="Decision explorer",
                    page="decisions", **context)

    def history(tenant: str, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Every log record of the same action (its approval and token events), oldest first."""
        if not record["action_digest"]:
            return [record]
        items, _ = ledger.search(state["store"], tenant, kind="all", limit=200,
                                 action_digest=record["action_digest"])
        return sorted(items, key=lambda r: r["seq"])

    @router.get("/decisions/{request_id}")
    async def decision_detail(request: Request, request_id: str) -> Response:
        session = await auditor(request)
        if not isinstance(session, Session):
            return session
        tenant = session.key.tenant_id
        record = await run_in_threadpool(ledger.get, state["store"], tenant, request_id)
        if record is None:
            return html(request, "denied.html", 404, session, title="Not found",
                        what=f"There is no decision `{request_id}` in your tenant.")
        problems = await run_in_threadpool(ledger.verify_record, state["store"], tenant,
                                           record["seq"])
        events = await run_in_threadpool(history, tenant, record)
        return html(request, "decision.html", 200, session, title=f"Decision {request_id}",
                    page="decisions", record=record, problems=problems, events=events)

    # -- policy -----------------------------------------------------------------------------

    @router.get("/policy")
    async def policy_page(request: Request) -> Response:
        session = await signed_in(request)
        if not isinstance(session, Session):
            return session
        policy: CompiledPolicy | None = state.get("policy")
        now = state["clock"]()
        windows = []
        freezes = []
        if policy is not None:
            for name, window in sorted(policy.windows.items()):
                is_open = window.contains(now)
                windows.append({"name": name, "describe": window.describe(), "open": is_open,
                                "next_open": None if is_open else window.next_open(now)})
            freezes = [{"name": f.name, "start": f.start, "end": f.end, "reason": f.reason,
                        "buckets": f.buckets, "active": f.start <= now < f.end}
                       for f in policy.freezes]
        shadow = None
        if session.can("audit:read"):
            report = await run_in_threadpool(
                lambda: shadow_report(state["store"], tenant=session.key.tenant_id,
                                      since=now - timedelta(days=SHADOW_DAYS)))
            shadow = report.to_dict()
        return html(request, "policy.html", 200, session, title="Policy", page="policy",
                    policy=policy, windows=windows, freezes=freezes, shadow=shadow,
                    shadow_days=SHADOW_DAYS,
                    shadow_rules=[r for r in policy.rules if r.shadow] if policy else [])

    return router
