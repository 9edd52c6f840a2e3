"""Operations: ``/healthz``, ``/readyz``, ``/metrics`` and the API's ``/docs`` page."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from stage0 import __version__
from stage0.server import metrics
from stage0.server.auth import authenticate
from stage0.server.errors import ApiError
from stage0.server.state import AppState, State
from stage0.server.static import DOCS_STATIC, static_files

router = APIRouter()

_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
_DOCS_HEADERS = {
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
}


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


def _writable(state: AppState) -> None:
    with state.store.begin() as conn:
        conn.exec_driver_sql("UPDATE chain_heads SET seq = seq WHERE 1 = 0")


async def _problems(state: AppState) -> list[str]:
    problems = []
    if state.policy is None:
        problems.append("no policy pack is loaded")
    try:
        await run_in_threadpool(_writable, state)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        problems.append(f"the store is not writable: {str(exc).splitlines()[0][:200]}")
    if state.pipeline.broken is not None:
        problems.append(state.pipeline.broken)
    if state.fleet is not None:  # the store's active policy: failed to load here, or drifting
        problems.extend(state.fleet.problems())
    return problems


@router.get("/readyz", summary="Readiness: policy loaded (the store's active one) and store "
            "writable")
async def readyz(state: State) -> JSONResponse:
    problems = await _problems(state)
    policy = state.policy
    body: dict[str, Any] = {
        "status": "ready" if not problems else "not ready",
        "policy_version": policy.policy_version if policy else None,
        "policy_sha256": policy.sha256 if policy else None,
        "held_versions": state.packs.held_versions if state.packs is not None else [],
        "problems": problems,
        "last_reload": state.reloader.status if state.reloader is not None else None,
        "frozen_time": state.settings.frozen_time,
        "fleet": state.fleet.status() if state.fleet is not None else None,
    }
    return JSONResponse(body, 200 if not problems else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(request: Request, state: State) -> Response:
    access = getattr(request.app.state, "metrics_access", None)  # #16 item 3: protected?
    if access is not None and access.mode == "token" and not access.token_matches(
            request.headers.get("authorization")):
        raise ApiError(401, "METRICS_TOKEN_INVALID",
                       "/metrics needs `Authorization: Bearer <STAGE0_METRICS_TOKEN>`")
    if access is not None and access.mode == "key":
        await authenticate(request, state, "audit:read")
    data, content_type = metrics.exposition()
    return Response(data, media_type=content_type)


def mount_api_docs(app: FastAPI) -> None:
    """``GET /docs``: Swagger UI with every asset served from ``/docs/static`` (no CDN), under
    a CSP of 'self' plus the hash of the page's one inline script (its start-up call)."""
    app.mount("/docs/static", static_files(DOCS_STATIC), name="docs-static")

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
