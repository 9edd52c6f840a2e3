"""The operator console at ``/console``: sign-in, approval inbox, decision explorer, policy.

Server-rendered HTML (Jinja2, autoescaped) with htmx for partial updates; every asset is served
from ``/console/static`` (no CDN). Reads use the same store helpers as the JSON API; approving
and rejecting go through the decision pipeline exactly like ``POST /v1/approvals/{id}/approve``
(same checks, same hash-chained events), as the session's key. Each page (``console.pages``)
gets the app's ``AppState`` by the server's ``app_state`` dependency.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from stage0.console.pages import decisions, inbox, login, policy
from stage0.console.sessions import ConsoleSettings
from stage0.console.web import Leave, leave
from stage0.server.static import static_files

STATIC = Path(__file__).resolve().parent / "static"


PAGES = (login, inbox, decisions, policy)


def mount_console(app: FastAPI, settings: ConsoleSettings | None = None) -> None:
    """Serve the console from ``app`` at ``/console`` (the store, policy, clock and pipeline
    are the app's ``AppState``, read per request)."""
    app.state.console = settings or ConsoleSettings.from_env()
    app.add_exception_handler(Leave, leave)
    for page in PAGES:
        app.include_router(page.router)
    app.mount("/console/static", static_files(STATIC), name="console-static")
