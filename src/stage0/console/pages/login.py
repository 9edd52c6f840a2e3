"""Signing in with an API key (once; the session lives in the store) and signing out."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from stage0.console.sessions import ConsoleSettings, close_session, open_session
from stage0.console.web import (
    COOKIE,
    LOGIN_COOKIE,
    SECURITY_HEADERS,
    Options,
    base,
    check_csrf,
    current,
    form,
    html,
    redirect,
    return_to,
    secure,
)
from stage0.server.auth import source_of
from stage0.server.state import State
from stage0.store.keys import hash_key, lookup_key

READ_SCOPES = ("approve", "audit:read")
"""A key with one of these (or ``admin``) may sign in."""
router = APIRouter(prefix="/console", include_in_schema=False)


def login_page(request: Request, settings: ConsoleSettings, status: int = 200,
               error: str | None = None, notice: str | None = None,
               next_page: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = html(request, "login.html", status, None, title="Sign in", csrf=token,
                    error=error, notice=notice, next_page=return_to(next_page))
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/console", httponly=True,
                        samesite="strict", secure=secure(request, settings))
    return response


@router.get("")
async def console_root(request: Request) -> Response:
    return redirect(request, "/inbox")


@router.get("/login")
async def login_form(request: Request, state: State, settings: Options) -> Response:
    if await current(request, state) is not None:
        return redirect(request, "/inbox")
    notice = {"expired": "Your session has expired or ended; sign in again.",
              "signed_out": "You are signed out."}.get(request.query_params.get("m", ""))
    return login_page(request, settings, notice=notice,
                      next_page=request.query_params.get("next"))


@router.post("/login")
async def login(request: Request, state: State, settings: Options) -> Response:
    fields = await form(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    sent = fields.get("csrf_token", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return login_page(request, settings, 403,
                          "The sign-in form expired (CSRF protection); try again.",
                          next_page=fields.get("next"))
    secret = fields.get("api_key", "").strip()
    source = source_of(request)
    wait = state.auth.retry_after(source, secret) if secret else None
    if wait is not None:  # the back-off of failed authentications (server/backoff.py)
        page = login_page(request, settings, 429, "Too many failed sign-ins from this address "
                          f"or with this key: try again in {wait} s.")
        page.headers["retry-after"] = str(wait)
        return page
    key = await run_in_threadpool(lookup_key, state.store, secret) if secret else None
    if key is None:
        if secret:
            state.auth.failed(source, secret, "console")
        return login_page(request, settings, 401, "This API key is unknown or revoked.",
                          next_page=fields.get("next"))
    state.auth.succeeded(source, hash_key(secret))
    if not key.can(*READ_SCOPES):
        return login_page(
            request, settings, 403,
            f"The key `{key.name}` (scopes: {', '.join(key.scopes) or 'none'}) cannot sign "
            "in: the console needs a key with the approve, audit:read or admin scope.")
    if request.cookies.get(COOKIE):  # signing in again replaces the previous session
        await run_in_threadpool(close_session, state.store, request.cookies[COOKIE])
    token, _ = await run_in_threadpool(open_session, state.store, key, settings.session_ttl_s)
    response = RedirectResponse(base(request) + return_to(fields.get("next")), 303,
                                headers=SECURITY_HEADERS)
    response.set_cookie(COOKIE, token, max_age=settings.session_ttl_s, path="/console",
                        httponly=True, samesite="strict", secure=secure(request, settings))
    response.delete_cookie(LOGIN_COOKIE, path="/console", httponly=True, samesite="strict",
                           secure=secure(request, settings))
    return response


@router.post("/logout")
async def logout(request: Request, state: State, settings: Options) -> Response:
    session = await current(request, state)
    if session is None:
        return redirect(request, "/login?m=expired")
    check_csrf(session, request, await form(request))
    await run_in_threadpool(close_session, state.store, request.cookies[COOKIE])
    response = redirect(request, "/login?m=signed_out")
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict",
                           secure=secure(request, settings))
    return response
