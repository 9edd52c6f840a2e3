"""API-key authentication of the routed API: the key from ``x-api-key`` (or
``Authorization: Bearer``), looked up in the store, and its scopes (``ApiKey.can``: ``admin``
passes every scope)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from stage0.server.errors import ApiError
from stage0.server.state import AppState
from stage0.store.keys import ApiKey, lookup_key


def secret_of(api_key: str | None, authorization: str | None) -> str:
    """The key's secret from the ``x-api-key`` or ``Authorization: Bearer`` header."""
    key = api_key or ""
    if not key and authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    return key.strip()


def request_secret(request: Request) -> str:
    return secret_of(request.headers.get("x-api-key"), request.headers.get("authorization"))


async def authenticate(request: Request, state: AppState, *scopes: str) -> ApiKey:
    """The calling key, holding one of ``scopes`` (any key when none is named): 401 when the
    key is missing, unknown or revoked, 403 when it lacks the scopes."""
    secret = request_secret(request)
    key = await run_in_threadpool(lookup_key, state.store, secret) if secret else None
    if key is None:
        raise ApiError(401, "API_KEY_INVALID", "Invalid or missing API key")
    if scopes and not key.can(*scopes):
        if len(scopes) == 1:
            raise ApiError(403, "SCOPE_MISSING", f"This key lacks the `{scopes[0]}` scope")
        raise ApiError(403, "SCOPE_MISSING",
                       f"This key lacks one of the scopes {', '.join(scopes)}")
    return key
