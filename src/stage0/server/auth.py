"""API-key authentication of the routed API: the key from ``x-api-key`` (or
``Authorization: Bearer``), looked up in the store, and its scopes (``ApiKey.can``: ``admin``
passes every scope); the back-off of failed authentications (``server/backoff.py``) before the
look-up, and the failure or success counted after it."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from stage0.server.backoff import DETAIL
from stage0.server.errors import ApiError
from stage0.server.jobs import Job
from stage0.server.state import AppState
from stage0.store.keys import ApiKey, hash_key, lookup_key


def secret_of(api_key: str | None, authorization: str | None) -> str:
    """The key's secret from the ``x-api-key`` or ``Authorization: Bearer`` header."""
    key = api_key or ""
    if not key and authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    return key.strip()


def request_secret(request: Request) -> str:
    return secret_of(request.headers.get("x-api-key"), request.headers.get("authorization"))


def source_of(request: Request) -> str:
    """The client address the back-off counts (uvicorn's: a trusted proxy's forwarded one)."""
    client = request.client
    return client.host if client is not None else ""


def backing_off(state: AppState, source: str, secret: str) -> None:
    """Refuse (429 ``AUTH_BACKOFF``) a key sent from a source, or a key, that backs off."""
    wait = state.auth.retry_after(source, secret)
    if wait is not None:
        raise ApiError(429, "AUTH_BACKOFF", DETAIL, retry_after_seconds=wait)


def counted(state: AppState, source: str, secret: str, job: Job, status: int) -> None:
    """After the writer answered ``job``: its key authenticated, or it was unknown (401)."""
    if job.key is not None:
        state.auth.succeeded(source, job.secret_hash or hash_key(secret))
    elif status == 401:
        state.auth.failed(source, secret, "api")


async def authenticate(request: Request, state: AppState, *scopes: str) -> ApiKey:
    """The calling key, holding one of ``scopes`` (any key when none is named): 401 when the
    key is missing, unknown or revoked, 403 when it lacks the scopes."""
    secret = request_secret(request)
    key = None
    if secret:
        source = source_of(request)
        backing_off(state, source, secret)
        key = await run_in_threadpool(lookup_key, state.store, secret)
        if key is None:
            state.auth.failed(source, secret, "api")
        else:
            state.auth.succeeded(source, hash_key(secret))
    if key is None:
        raise ApiError(401, "API_KEY_INVALID", "Invalid or missing API key")
    if scopes and not key.can(*scopes):
        if len(scopes) == 1:
            raise ApiError(403, "SCOPE_MISSING", f"This key lacks the `{scopes[0]}` scope")
        raise ApiError(403, "SCOPE_MISSING",
                       f"This key lacks one of the scopes {', '.join(scopes)}")
    return key
