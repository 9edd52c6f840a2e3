"""Static files with the security headers: the API's ``/docs/static`` and the console's
``/console/static``."""

from __future__ import annotations

from pathlib import Path

from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ASSETS = Path(__file__).resolve().parent.parent / "console" / "static"
"""The vendored assets (``console/static``, pinned by ``console/assets.lock.json``): a path,
so that the server does not import the console."""
DOCS_STATIC = ASSETS / "swagger-ui"
"""swagger-ui-dist, vendored from the npm registry against ``assets.lock.json``."""


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


def static_files(directory: Path) -> StaticHeaders:
    return StaticHeaders(StaticFiles(directory=directory))
