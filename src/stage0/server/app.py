"""The FastAPI application: routes, authentication, errors in one shape."""

from __future__ import annotations

import base64
import gc
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from stage0 import __version__
from stage0.console import mount_console
from stage0.console.routes import STATIC as CONSOLE_STATIC
from stage0.console.routes import StaticHeaders
from stage0.contract import CheckRequest, CheckResponse, RequestValidationError, parse_request
from stage0.contract.request import MAX_BODY_BYTES, parse_instant
from stage0.engine import system_clock
from stage0.engine.evaluate import uuid4_id
from stage0.policy import CompiledPolicy, PolicyError, load_policy
from stage0.policy.packset import PackSet, load_pack_set
from stage0.server import metrics
from stage0.server.jobs import Job, error_body
from stage0.server.pipeline import Pipeline
from stage0.server.reload import PolicyReloader
from stage0.store import Store, ledger
from stage0.store import approvals as approvals_store
from stage0.store.keys import ApiKey, lookup_key
from stage0.store.schema import key_usage
from stage0.store.signing import ensure_signing_key
from stage0.store.usage import Counts, Windows
from stage0.store.webhooks import Deliverer, deliveries_for

log = logging.getLogger("stage0.server")
GC_THRESHOLD = int(os.environ.get("STAGE0_GC_THRESHOLD", "20000"))


@dataclass(frozen=True, slots=True)
class Settings:
    db: str | None = None
    policy: str | None = None
    frozen_time: str | None = None
    environment: str = "self-hosted"
    tune_gc: bool = False
    """Freeze start-up objects and collect less often (the served process; not tests)."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            db=os.environ.get("STAGE0_DATABASE_URL"),
            policy=os.environ.get("STAGE0_POLICY") or None,
            frozen_time=os.environ.get("STAGE0_FROZEN_TIME") or None,
            environment=os.environ.get("STAGE0_ENVIRONMENT", "self-hosted"),
            tune_gc=True,
        )


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(max_length=2000)] = ""
    totp: Annotated[str | None, Field(max_length=12, description="RFC 6238 code, when the "
                                      "request needs approver MFA")] = None


class RejectBody(ApproveBody):
    pass


class BreakGlassBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: Annotated[str, Field(min_length=1, max_length=100, description=(
        "The logged `/check` decision that a closed change window or a freeze held back"))]
    reason: Annotated[str, Field(max_length=2000, description=(
        "Why it cannot wait: the incident, the ticket (required; the pack sets the minimum "
        "length)"))]
    totp: Annotated[str | None, Field(max_length=12, description="RFC 6238 code, when the "
                                      "pack's `break_glass.mfa` is on")] = None


class ConsumeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, Field(min_length=1, max_length=8000)]
    action_digest: Annotated[str, Field(min_length=64, max_length=64,
                                        pattern="^[0-9a-f]{64}$")]


class ApiError(Exception):
    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        self.status, self.detail, self.extra = status, detail, extra


def _request_id(header: str | None) -> tuple[str, bool]:
    """The client's ``X-Request-Id`` when it is a valid UUID, else a new one."""
    if header:
        try:
            return str(uuid.UUID(header.strip())), True
        except ValueError:
            pass
    return uuid4_id(), False


def _route(request: Request) -> str:
    """The template of the route that answered ``request`` (a bounded metrics label)."""
    route = request.scope.get("route")
    return str(getattr(route, "path", None) or "(unrouted)")


def _secret(request: Request) -> str:
    return _secret_of(request.headers.get("x-api-key"), request.headers.get("authorization"))


def _secret_of(api_key: str | None, authorization: str | None) -> str:
    key = api_key or ""
    if not key and authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    return key.strip()


CheckHandler = Callable[[Callable[[str], str | None], bytes, int],
                        Awaitable[tuple[int, bytes, dict[str, str]]]]


class Stage0App(FastAPI):
    """FastAPI, with ``POST /check`` answered straight from the ASGI call.

    ``/check`` is the hot path: routing, middleware and request objects cost as much CPU as a
    decision. The route stays registered (it is the OpenAPI description and serves any other
    ASGI entry), and both paths share one handler, so they answer the same bytes.
    """

    check_handler: CheckHandler | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.check_handler is not None and scope["type"] == "http"
                and scope["path"] == "/check" and scope["method"] == "POST"):
            await _fast_check(self.check_handler, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _fast_check(handler: CheckHandler, scope: Scope, receive: Receive,
                      send: Send) -> None:
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    started = False
    try:
        body = bytearray()
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if len(body) <= MAX_BODY_BYTES:
                body += chunk
            more = message.get("more_body", False)
        status, content, extra = await handler(headers.get, bytes(body), size)
        out = [(b"content-type", b"application/json"),
               (b"content-length", str(len(content)).encode())]
        out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
        started = True
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": content})
    except Exception:
        log.exception("internal error")
        if started:
            raise
        rid = _request_id(headers.get("x-request-id"))[0]
        content = orjson.dumps(error_body(500, "Internal error", rid))
        await send({"type": "http.response.start", "status": 500, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            (b"x-request-id", rid.encode("latin-1"))]})
        await send({"type": "http.response.body", "body": content})


DOCS_STATIC = CONSOLE_STATIC / "swagger-ui"
"""swagger-ui-dist, vendored from the npm registry against ``assets.lock.json``."""
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
_DOCS_HEADERS = {
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
}


def mount_api_docs(app: FastAPI) -> None:
    """``GET /docs``: Swagger UI with every asset served from ``/docs/static`` (no CDN), under
    a CSP of 'self' plus the hash of the page's one inline script (its start-up call)."""
    app.mount("/docs/static", StaticHeaders(StaticFiles(directory=DOCS_STATIC)),
              name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} API {app.version}",
            swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/static/swagger-ui.css",
            swagger_favicon_url=f"{root}/console/static/favicon.svg",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
        )
        body = bytes(page.body)
        hashes = " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
            for script in _INLINE_SCRIPT.findall(body))
        csp = (f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; "
               "img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'none'")
        return HTMLResponse(body, headers={**_DOCS_HEADERS, "content-security-policy": csp})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store = Store(settings.db)
        store.migrate()
        ensure_signing_key(store)
        policy: CompiledPolicy | None
        packs: PackSet | None
        try:
            packs = (load_pack_set(settings.policy) if settings.policy
                     else PackSet(load_policy(None)))
            policy = packs.active
        except PolicyError as exc:
            log.error("%s; every /check fails closed until a valid pack is loaded", exc)
            policy, packs = None, None
        if settings.frozen_time:
            frozen = parse_instant(settings.frozen_time)
            clock = lambda: frozen  # noqa: E731 - a constant clock
            log.warning("evaluation clock frozen at %s (recorded on every decision)",
                        settings.frozen_time)
        else:
            clock = system_clock
        pipeline = Pipeline(store, policy, clock=clock, frozen_time=settings.frozen_time,
                            held=packs.held if packs is not None else ())
        reloader: PolicyReloader | None = None
        if policy is not None:
            metrics.POLICY_INFO.labels(policy_version=policy.policy_version,
                                       sha256=policy.sha256).set(1)

        def apply(new_set: PackSet) -> None:
            old, new = state.get("policy"), new_set.active
            pipeline.swap_policy(new, new_set.held)
            state["policy"], state["packs"] = new, new_set
            if old is not None:
                metrics.POLICY_INFO.labels(policy_version=old.policy_version,
                                           sha256=old.sha256).set(0)
            metrics.POLICY_INFO.labels(policy_version=new.policy_version,
                                       sha256=new.sha256).set(1)

        if settings.policy:
            reloader = PolicyReloader(settings.policy, apply)
            reloader.start()
        sweeps = {"last": 0.0}

        def sweep() -> None:  # expire approvals every 30 s, from the delivery thread
            if time.monotonic() - sweeps["last"] >= 30.0:
                sweeps["last"] = time.monotonic()
                pipeline.sweep().result(timeout=60)

        deliverer = Deliverer(store, on_tick=sweep)
        deliverer.start()
        state.update(store=store, policy=policy, packs=packs, clock=clock, pipeline=pipeline,
                     deliverer=deliverer)
        state["reloader"] = reloader
        # What was built so far (pack, engine caches, modules) lives as long as the server:
        # move it out of the collector's sight, and collect the young generation less often
        # (a decision allocates many short-lived objects; cycles among them are rare).
        if settings.tune_gc:
            gc.collect()
            gc.freeze()
            gc.set_threshold(GC_THRESHOLD, 20, 20)
        yield
        if reloader is not None:
            reloader.close()
        deliverer.close()
        pipeline.close()
        store.dispose()

    app = Stage0App(
        title="Stage0",
        version=__version__,
        summary="Pre-execution authorization for AI agents: ALLOW, DEFER or DENY",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI and ReDoc from a CDN: ours below
        redoc_url=None,
    )
    mount_console(app, state)  # the operator console at /console (docs/console.md)
    mount_api_docs(app)

    # -- errors: one shape ------------------------------------------------------------------

    def _error(status: int, detail: str, request: Request, **extra: Any) -> JSONResponse:
        if status in metrics.REFUSAL_STATUSES:
            metrics.count_refusal(status, _route(request))
        rid = _request_id(request.headers.get("x-request-id"))[0]
        headers = {"x-request-id": rid}
        if "retry_after_seconds" in extra:
            headers["retry-after"] = str(extra["retry_after_seconds"])
        return JSONResponse(error_body(status, detail, rid, **extra), status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.detail, request, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), request)

    @app.exception_handler(FastAPIValidationError)
    async def _validation_error(request: Request, exc: FastAPIValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or "(request)",
             "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"`{e['field']}`: {e['message']}" for e in errors)
        return _error(422, f"invalid request: {detail}", request, errors=errors)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, "Internal error", request)

    # -- authentication -------------------------------------------------------------------

    async def authenticate(request: Request, scope: str | None = None) -> ApiKey:
        secret = _secret(request)
        key = await run_in_threadpool(lookup_key, state["store"], secret) if secret else None
        if key is None:
            raise ApiError(401, "Invalid or missing API key")
        if scope is not None and scope not in key.scopes and "admin" not in key.scopes:
            raise ApiError(403, f"This key lacks the `{scope}` scope")
        return key

    async def authenticate_any(request: Request, scopes: tuple[str, ...]) -> ApiKey:
        key = await authenticate(request)
        if "admin" not in key.scopes and not set(scopes) & set(key.scopes):
            raise ApiError(403, f"This key lacks one of the scopes {', '.join(scopes)}")
        return key

    # -- /check -------------------------------------------------------------------------------

    check_responses: dict[int | str, dict[str, Any]] = {
        200: {"model": CheckResponse, "description": "A decision: ALLOW, DEFER or DENY"},
        401: {"description": "Missing, invalid or revoked key"},
        402: {"description": "Pro checks require a paid plan; monthly quota exceeded"},
        409: {"description": "X-Request-Id reused with a different body"},
        422: {"description": "The request does not match the contract (never an ALLOW)"},
        429: {"description": "Per-minute or daily limit; see retry_after_seconds"},
        503: {"description": "The service cannot decide; the body still says verdict DENY"},
    }

    request_schema = CheckRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    request_defs = request_schema.pop("$defs", {})

    @app.post(
        "/check",
        responses=check_responses,
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": request_schema}}}},
        summary="Decide one proposed action",
    )
    async def check(request: Request) -> Response:
        raw = await request.body()
        status, content, headers = await decide_check(request.headers.get, raw, len(raw))
        return Response(content, status, headers=headers, media_type="application/json")

    async def decide_check(header: Callable[[str], str | None], raw: bytes,
                           size: int) -> tuple[int, bytes, dict[str, str]]:
        """One ``/check``: the FastAPI route and the ASGI fast path both answer with this.
        ``raw`` holds at most a little more than the size limit; ``size`` is what was sent."""
        started = time.perf_counter()
        rid, client_rid = _request_id(header("x-request-id"))
        secret = _secret_of(header("x-api-key"), header("authorization"))
        if not secret:
            metrics.count_refusal(401, "/check")
            return 401, orjson.dumps(error_body(401, "Invalid or missing API key", rid)), {
                "x-request-id": rid}
        parsed: CheckRequest | None = None
        invalid: RequestValidationError | None = None
        t0 = time.perf_counter()
        try:
            if size > MAX_BODY_BYTES:
                raise RequestValidationError.single(
                    "(body)", f"body is {size} bytes; the limit is {MAX_BODY_BYTES}",
                    "too_large")
            parsed = parse_request(raw)
        except RequestValidationError as exc:
            invalid = exc
            raw = raw[:MAX_BODY_BYTES]
        job = Job(secret=secret, raw=raw, request=parsed, invalid=invalid, request_id=rid,
                  client_request_id=client_rid, started=started,
                  parse_us=(time.perf_counter() - t0) * 1e6)
        try:  # redaction and hashing here, not in the writer's turn
            job.logged_request()
        except Exception:  # the writer tries again, and fails this one closed
            log.debug("could not prepare the log's copy of %s", rid, exc_info=True)
        _ = job.input_sha256
        outcome = await state["pipeline"].answer(job)
        metrics.LATENCY.observe(time.perf_counter() - started)
        if outcome.status in metrics.REFUSAL_STATUSES:  # refusals only pay for the count
            metrics.count_refusal(outcome.status, "/check")
        content = outcome.body if isinstance(outcome.body, bytes) else orjson.dumps(outcome.body)
        return outcome.status, content, outcome.headers

    app.check_handler = decide_check
    app.state.stage0 = state  # the store, pipeline and policy once started (tests, tools)

    # -- /usage ---------------------------------------------------------------------------

    @app.get("/usage", summary="Usage of the calling key in its current windows")
    async def usage(request: Request) -> dict[str, Any]:
        key = await authenticate(request)
        now = state["clock"]()
        windows = Windows.at(now)

        def read() -> Any:
            with state["store"].connect() as conn:
                return conn.execute(
                    key_usage.select().with_only_columns(
                        key_usage.c.month_key, key_usage.c.month_count, key_usage.c.day_key,
                        key_usage.c.day_count, key_usage.c.minute_key, key_usage.c.minute_count,
                    ).where(key_usage.c.key_id == key.id)
                ).first()

        counts = Counts.current(await run_in_threadpool(read), windows)

        def remaining(quota: int | None, used: int) -> int | None:
            return None if quota is None else max(0, quota - used)

        return {
            "request_id": _request_id(request.headers.get("x-request-id"))[0],
            "api_key_id": key.id,
            "plan": key.plan,
            "month_key": windows.month,
            "monthly_used": counts.month,
            "monthly_quota": key.monthly_quota,
            "monthly_remaining": remaining(key.monthly_quota, counts.month),
            "day_key": windows.day,
            "daily_used": counts.day,
            "daily_quota": key.daily_quota,
            "daily_remaining": remaining(key.daily_quota, counts.day),
            "per_minute_limit": key.per_minute,
            "minute_used": counts.minute,
            "minute_remaining": remaining(key.per_minute, counts.minute),
            "environment": settings.environment,
            "source": "stage0-self-hosted",
            "evaluated_at": now.timestamp(),
        }

    # -- the decision log ---------------------------------------------------------------------

    @app.get("/v1/decisions/{request_id}", summary="One logged decision of the key's tenant")
    async def get_decision(request: Request, request_id: str) -> dict[str, Any]:
        key = await authenticate(request, "audit:read")
        record = await run_in_threadpool(ledger.get, state["store"], key.tenant_id, request_id)
        if record is None:
            raise ApiError(404, f"No decision `{request_id}` in this tenant")
        return record

    @app.get("/v1/decisions", summary="Logged decisions of the key's tenant, newest first")
    async def list_decisions(
        request: Request,
        verdict: Annotated[str | None, Query(pattern="^(ALLOW|DEFER|DENY|allow|defer|deny)$")]
        = None,
        tool: str | None = None,
        bucket: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
        kind: Annotated[str | None, Query(max_length=40)] = None,
    ) -> dict[str, Any]:
        key = await authenticate(request, "audit:read")
        try:
            since_at = parse_instant(since) if since else None
            until_at = parse_instant(until) if until else None
        except ValueError as exc:
            raise ApiError(422, f"invalid request: {exc}") from None
        before: int | None = None
        if cursor:
            try:
                before = int(cursor)
            except ValueError:
                raise ApiError(422, "invalid request: `cursor` is not a cursor from a previous "
                                    "page") from None
        items, next_id = await run_in_threadpool(
            lambda: ledger.search(
                state["store"], key.tenant_id, verdict=verdict, tool=tool, bucket=bucket,
                since=since_at, until=until_at, limit=limit, before_id=before, kind=kind,
            )
        )
        return {"items": items, "next_cursor": None if next_id is None else str(next_id)}

    # -- approvals and execution tokens -------------------------------------------------------

    async def through_pipeline(request: Request, op: str, payload: dict[str, Any]) -> Response:
        rid, _ = _request_id(request.headers.get("x-request-id"))
        secret = _secret(request)
        if not secret:
            raise ApiError(401, "Invalid or missing API key")
        job = Job(secret=secret, raw=orjson.dumps(payload), request=None, invalid=None,
                  request_id=rid, client_request_id=False, started=time.perf_counter(),
                  op=op, payload=payload)
        outcome = await state["pipeline"].answer(job)
        if outcome.status in metrics.REFUSAL_STATUSES:
            metrics.count_refusal(outcome.status, _route(request))
        content = outcome.body if isinstance(outcome.body, bytes) else orjson.dumps(outcome.body)
        return Response(content, outcome.status, headers=outcome.headers,
                        media_type="application/json")

    def _now_us() -> int:
        return int(state["clock"]().timestamp() * 1e6)

    @app.get("/v1/approvals", summary="Approval requests of the key's tenant, newest first")
    async def list_approval_requests(
        request: Request,
        status: Annotated[str | None,
                          Query(pattern="^(pending|approved|rejected|expired|used)$")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        kind: Annotated[str | None, Query(pattern="^(standard|break_glass)$")] = None,
    ) -> dict[str, Any]:
        key = await authenticate_any(request, ("approve", "audit:read"))
        items = await run_in_threadpool(
            lambda: approvals_store.list_approvals(
                state["store"], key.tenant_id, status, _now_us(), limit, kind=kind))
        return {"items": items}

    @app.get("/v1/approvals/{approval_id}", summary="One approval request with its votes")
    async def get_approval_request(request: Request, approval_id: str) -> dict[str, Any]:
        key = await authenticate(request)
        reader = "admin" in key.scopes or {"approve", "audit:read"} & set(key.scopes)
        found = await run_in_threadpool(
            approvals_store.get_approval, state["store"], key.tenant_id, approval_id, _now_us())
        if found is not None and not reader and found["requested_by"]["key_id"] != key.id:
            found = None  # a requester may follow its own requests only
        if found is None:
            raise ApiError(404, f"No approval request `{approval_id}` in this tenant",
                           code="APPROVAL_NOT_FOUND")
        found["webhook_deliveries"] = await run_in_threadpool(
            deliveries_for, state["store"], approval_id)
        return found

    @app.post("/v1/approvals/{approval_id}/approve",
              summary="Approve, as the principal of the calling key")
    async def approve(request: Request, approval_id: str, body: ApproveBody) -> Response:
        return await through_pipeline(request, "approve", {
            "approval_id": approval_id, "reason": body.reason, "totp": body.totp})

    @app.post("/v1/approvals/{approval_id}/reject",
              summary="Reject, as the principal of the calling key; ends the request")
    async def reject(request: Request, approval_id: str, body: RejectBody) -> Response:
        return await through_pipeline(request, "reject", {
            "approval_id": approval_id, "reason": body.reason, "totp": body.totp})

    @app.post("/v1/break-glass",
              summary="Declare a break-glass approval for a decision held by a window or freeze")
    async def break_glass(request: Request, body: BreakGlassBody) -> Response:
        return await through_pipeline(request, "break_glass", {
            "request_id": body.request_id, "reason": body.reason, "totp": body.totp})

    @app.get("/.well-known/jwks.json", summary="Public keys of execution tokens (JWKS)")
    async def jwks() -> dict[str, Any]:
        return await run_in_threadpool(state["pipeline"].keyring.jwks, _now_us())

    @app.post("/v1/tokens/consume", summary="Consume an execution token, once")
    async def consume(request: Request, body: ConsumeBody) -> Response:
        return await through_pipeline(request, "consume", {
            "token": body.token, "action_digest": body.action_digest})

    # -- operations -------------------------------------------------------------------------

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", summary="Readiness: policy loaded and store writable")
    async def readyz() -> JSONResponse:
        problems = []
        policy: CompiledPolicy | None = state.get("policy")
        if policy is None:
            problems.append("no policy pack is loaded")

        def writable() -> None:
            with state["store"].begin() as conn:
                conn.exec_driver_sql("UPDATE chain_heads SET seq = seq WHERE 1 = 0")

        try:
            await run_in_threadpool(writable)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            problems.append(f"the store is not writable: {str(exc).splitlines()[0][:200]}")
        broken = state["pipeline"].broken if state.get("pipeline") is not None else None
        if broken is not None:
            problems.append(broken)
        reloader = state.get("reloader")
        body = {
            "status": "ready" if not problems else "not ready",
            "policy_version": policy.policy_version if policy else None,
            "policy_sha256": policy.sha256 if policy else None,
            "held_versions": state["packs"].held_versions
            if state.get("packs") is not None else [],
            "problems": problems,
            "last_reload": reloader.status if reloader is not None else None,
            "frozen_time": settings.frozen_time,
        }
        return JSONResponse(body, 200 if not problems else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the models the hand-written /check body schema refers to."""
        if app.openapi_schema is None:
            spec = generate()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(request_defs)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` and the workers of ``stage0 serve``."""
    return create_app(Settings.from_env())


