"""The API as a FastAPI app (without the console: :mod:`stage0.app` assembles both).

``POST /check`` is answered straight from the ASGI call (:class:`Stage0App`); every other route
is one of the routers of :mod:`stage0.server.routes`, and gets the app's :class:`AppState` by
the ``app_state`` dependency.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from stage0 import __version__
from stage0.contract.request import MAX_BODY_BYTES
from stage0.server import errors
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
        state: AppState = start(settings)
        app.state.stage0 = state  # read by the routes (``app_state``), tests and tools
        app.check_handler = partial(check.decide_check, state)
        try:
            yield
        finally:
            app.check_handler = None
            state.close()

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
    ops.mount_api_docs(app)
    errors.install(app)
    for router in (check.router, authzen.router, decisions.router, approvals.router,
                   ops.router):
        app.include_router(router)
    _with_request_defs(app)
    return app
