"""The console's plumbing, shared by its pages: templates, the security headers, redirects,
forms, CSRF, and the session as a FastAPI dependency (:data:`SignedIn`, :data:`Auditor`)
that answers the sign-in redirect or the refusal page itself (:class:`Leave`)."""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from stage0.console.render import environment
from stage0.console.sessions import ConsoleSettings, Session, load_session
from stage0.server.state import AppState, State

COOKIE = "stage0_session"
LOGIN_COOKIE = "stage0_login_csrf"
MAX_FORM_BYTES = 16_384
TEMPLATES = environment()

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


class Leave(Exception):
    """Answer ``response`` now (a redirect to the sign-in page, a refusal page)."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


async def leave(_: Request, exc: Exception) -> Response:
    """The exception handler of :class:`Leave`."""
    assert isinstance(exc, Leave)
    return exc.response


def console_settings(request: Request) -> ConsoleSettings:
    settings: ConsoleSettings = request.app.state.console
    return settings


Options = Annotated[ConsoleSettings, Depends(console_settings)]


def base(request: Request) -> str:
    return str(request.scope.get("root_path", "")) + "/console"


def secure(request: Request, settings: ConsoleSettings) -> bool:
    return settings.secure_cookie == "always" or request.url.scheme == "https"


def html(request: Request, template: str, status: int = 200, session: Session | None = None,
         **context: Any) -> HTMLResponse:
    body = TEMPLATES.get_template(template).render(base=base(request), session=session,
                                                   **context)
    return HTMLResponse(body, status, headers=SECURITY_HEADERS)


def redirect(request: Request, path: str) -> Response:
    url = base(request) + path
    if request.headers.get("hx-request") == "true":
        return Response(status_code=204, headers={**SECURITY_HEADERS, "hx-redirect": url})
    return RedirectResponse(url, 303, headers=SECURITY_HEADERS)


async def form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def denied(request: Request, session: Session | None, what: str, status: int = 403,
           title: str = "Not allowed") -> HTMLResponse:
    return html(request, "denied.html", status, session, title=title, what=what)


def check_csrf(session: Session, request: Request, fields: dict[str, str]) -> None:
    """Refuse (403) a form without the session's CSRF token."""
    sent = fields.get("csrf_token") or request.headers.get("x-csrf-token") or ""
    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise Leave(denied(request, session, "The form's security token is missing or stale "
                                             "(CSRF protection). Reload the page and try "
                                             "again."))


async def current(request: Request, state: AppState) -> Session | None:
    token = request.cookies.get(COOKIE, "")
    if not token:
        return None
    return await run_in_threadpool(load_session, state.store, token)


_RETURN_TO = re.compile(r"/approvals/[A-Za-z0-9_-]{1,40}")
"""Console pages a sign-in returns to (the approval links Stage0 hands out); anything else
goes to the inbox, so ``next`` can never send a signed-in operator elsewhere."""


def return_to(path: str | None) -> str:
    """Where a sign-in continues: ``path`` if it is one of the console's deep links."""
    return path if path is not None and _RETURN_TO.fullmatch(path) else "/inbox"


async def signed_in(request: Request, state: State) -> Session:
    """The session, or (a first visit, a session that expired or ended) the sign-in page,
    which comes back here after signing in when this is an approval's page."""
    session = await current(request, state)
    if session is None:
        page = request.url.path.removeprefix(base(request))
        back = f"next={quote(page, safe='/')}" if _RETURN_TO.fullmatch(page) else ""
        query = "&".join(q for q in ("m=expired" if COOKIE in request.cookies else "", back)
                         if q)
        raise Leave(redirect(request, "/login" + (f"?{query}" if query else "")))
    return session


SignedIn = Annotated[Session, Depends(signed_in)]


async def auditor(request: Request, session: SignedIn) -> Session:
    """The session, when its key may read the log (``audit:read`` or ``admin``)."""
    if not session.can("audit:read"):
        raise Leave(denied(request, session, "The decision explorer needs a key with the "
                                             "audit:read (or admin) scope."))
    return session


Auditor = Annotated[Session, Depends(auditor)]
