"""The API as a FastAPI app (without the console: :mod:`stage0.app` assembles both).

``POST /check`` is answered straight from the ASGI call (:class:`Stage0App`); every other route
is one of the routers of :mod:`stage0.server.routes`, and gets the app's :class:`AppState` by
the ``app_state`` dependency.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from stage0 import __version__
from stage0.contract.request import MAX_BODY_BYTES
from stage0.server import errors, logs, metrics, tracing
from stage0.server.jobs import error_body
from stage0.server.routes import approvals, authzen, check, decisions, ops
from stage0.server.state import AppState, Settings, start

__all__ = ["Settings", "Stage0App", "create_api"]

log = logging.getLogger("stage0.server")

CheckHandler = Callable[[Callable[[str], str | None], bytes, int, str],
                        Awaitable[tuple[int, bytes, dict[str, str]]]]
"""``decide_check`` bound to the state: headers, body, the size sent, the client's address."""


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
            if logs.ENABLED:  # decide_check settles this request's id
                logs.REQUEST_ID.set(None)
            await _fast_check(self.check_handler, scope, receive, send)
            return
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        await self._routed(scope, receive, send)

    async def _routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """#16 item 3: a routed request's latency by route template, and its request id on
        its log lines (JSON logs)."""
        started = time.perf_counter()
        root = str(scope.get("root_path", ""))
        tracked = logs.ENABLED
        if tracked:  # until the route settles it: the client's id, else one for these lines
            header = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
            logs.REQUEST_ID.set(errors.request_id(
                header.decode("latin-1") if header is not None else None)[0])
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if tracked:  # the access log's line (written in ``send``): the id answered
                    answered = next((v for k, v in message.get("headers", ())
                                     if k.lower() == b"x-request-id"), None)
                    if answered is not None:
                        logs.REQUEST_ID.set(answered.decode("latin-1"))
            await send(message)

        try:
            await super().__call__(scope, receive, sending)
        finally:
            metrics.observe_route(_route_label(scope, root), scope["method"], status,
                                  time.perf_counter() - started)


def _route_label(scope: Scope, root: str) -> str:
    """The template of the route that answered (under a mount, its prefix and the route's
    template; a mount's files, ``<prefix>/*``), or ``(unrouted)``: a bounded label."""
    prefix = str(scope.get("root_path", ""))[len(root):]
    path = getattr(scope.get("route"), "path", None)
    if path is None:  # a mount's files (``/docs/static/*``), or no route at all
        return f"{prefix}/*" if prefix else "(unrouted)"
    return f"{prefix}{path}" if prefix else str(path)


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
        client = scope.get("client")
        status, content, extra = await handler(headers.get, bytes(body), size,
                                               client[0] if client else "")
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
        rid = errors.request_id(headers.get("x-request-id"))[0]
        content = orjson.dumps(error_body(500, "Internal error", rid, code="INTERNAL_ERROR"))
        await send({"type": "http.response.start", "status": 500, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            (b"x-request-id", rid.encode("latin-1"))]})
        await send({"type": "http.response.body", "body": content})


def _lifespan(settings: Settings) -> Callable[[Stage0App], Any]:
    @asynccontextmanager
    async def lifespan(app: Stage0App) -> AsyncIterator[None]:
        traced = tracing.start_from_env()  # #16 item 2: OTLP, when an endpoint is set
        state: AppState = start(settings)
        app.state.stage0 = state  # read by the routes (``app_state``), tests and tools
        state.deliverer.on_attempt = metrics.count_webhook  # #16 item 3
        app.check_handler = partial(check.decide_check, state)
        try:
            yield
        finally:
            app.check_handler = None
            state.close()
            if traced:
                tracing.shutdown()

    return lifespan


def _with_request_defs(app: FastAPI) -> None:
    """FastAPI's document, plus the models the hand-written /check body schema refers to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(
                check.REQUEST_DEFS)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def create_api(settings: Settings | None = None) -> Stage0App:
    """The API: its routers, the one error shape, ``/docs`` and the lifespan that starts the
    :class:`AppState` (store, pipeline, reloader, deliverer)."""
    app = Stage0App(
        title="Stage0",
        version=__version__,
        summary="Pre-execution authorization for AI agents: ALLOW, DEFER or DENY",
        lifespan=_lifespan(settings or Settings.from_env()),
        docs_url=None,  # FastAPI's pages load Swagger UI and ReDoc from a CDN: ours, in ops
        redoc_url=None,
    )
    app.state.metrics_access = metrics.MetricsAccess.from_env()  # #16 item 3
    if logs.log_format() == "json":
        logs.enable()
    ops.mount_api_docs(app)
    errors.install(app)
    for router in (check.router, authzen.router, decisions.router, approvals.router,
                   ops.router):
        app.include_router(router)
    _with_request_defs(app)
    return app
