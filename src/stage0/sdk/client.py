"""Clients for the Stage0 API. They fail closed.

A timeout, a connection error, a 5xx, a refusal (401/402/429…), a malformed body or an unknown
verdict all come back as a :class:`CheckResult` with ``verdict: DENY`` and ``decision: ERROR``
and an issue saying why — never as something a careless caller could read as permission.

Defaults come from ``STAGE0_API_BASE`` and ``STAGE0_API_KEY``, the variables clients of the
hosted Stage0 API already read.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from stage0.contract.tokens import ALGORITHM, token_kid
from stage0.engine.digest import canonical_json
from stage0.sdk.local import LocalEngine
from stage0.sdk.results import (
    DEFAULT_BASE,
    CheckResult,
    StageZeroError,
    TokenRejected,
    failed_closed,
    interpret,
    request_body,
)

__all__ = ["AsyncClient", "CheckResult", "Client", "LocalEngine", "StageZeroError",
           "TokenRejected"]


@dataclass
class _Jwks:
    keys: KeySet | None = None
    loaded_at: float = 0.0
    kids: set[str] = field(default_factory=set)


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, timeout: float) -> None:
        self.base_url = (base_url or os.environ.get("STAGE0_API_BASE") or DEFAULT_BASE).rstrip("/")
        self.api_key = api_key or os.environ.get("STAGE0_API_KEY") or ""
        self.timeout = timeout
        self._jwks = _Jwks()

    def _headers(self, request_id: str | None = None) -> dict[str, str]:
        headers = {"x-api-key": self.api_key, "content-type": "application/json",
                   "user-agent": "stage0-python-sdk"}
        if request_id:
            headers["x-request-id"] = request_id
        return headers

    @staticmethod
    def _encode(body: Mapping[str, Any]) -> bytes:
        """RFC 8785 canonical JSON, so `input_sha256` matches the in-process engine's."""
        try:
            return canonical_json(dict(body))
        except (TypeError, ValueError):
            return orjson.dumps(dict(body))

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        try:
            body = response.json()
        except ValueError:
            raise StageZeroError(f"{what}: HTTP {response.status_code}, not JSON",
                                 response.status_code) from None
        if response.status_code >= 400:
            detail = body.get("detail") if isinstance(body, dict) else None
            raise StageZeroError(f"{what}: HTTP {response.status_code}: {detail}",
                                 response.status_code, body if isinstance(body, dict) else None)
        return body

    def _verify_with(self, keys: KeySet, token: str, action_digest: str,
                     now: float) -> dict[str, Any]:
        try:
            claims = dict(jwt.decode(token, keys, algorithms=[ALGORITHM]).claims)
        except (JoseError, ValueError) as exc:
            raise TokenRejected(f"the execution token does not verify: {exc}") from None
        if claims.get("action_digest") != action_digest:
            raise TokenRejected("the execution token was issued for a different action")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now:
            raise TokenRejected("the execution token has expired")
        return claims


class Client(_Base):
    """Synchronous client. ``http_client`` lets callers pass their own ``httpx.Client`` (its
    base URL and timeout then apply)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 5.0, http_client: httpx.Client | None = None) -> None:
        super().__init__(base_url, api_key, timeout)
        self._http = http_client or httpx.Client(base_url=self.base_url, timeout=timeout)
        self._owns = http_client is None
        self.approvals = _Approvals(self)

    def close(self) -> None:
        if self._owns:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, goal: str | Mapping[str, Any], *, request_id: str | None = None,
              **fields: Any) -> CheckResult:
        """Ask for a decision. Never raises for a transport or service problem: it denies."""
        body = request_body(goal, **fields)
        try:
            response = self._http.post("/check", content=self._encode(body),
                                       headers=self._headers(request_id))
        except httpx.HTTPError as exc:
            return failed_closed("SERVICE_UNAVAILABLE", f"{type(exc).__name__}: {exc}",
                                 request_id=request_id)
        return interpret(response.status_code, response.content, request_id, self.base_url)

    def usage(self) -> dict[str, Any]:
        return dict(self._json(self._http.get("/usage", headers=self._headers()), "usage"))

    def _get(self, path: str, what: str, **params: Any) -> Any:
        try:
            response = self._http.get(path, headers=self._headers(), params=params or None)
        except httpx.HTTPError as exc:
            raise StageZeroError(f"{what}: {exc}") from None
        return self._json(response, what)

    def _post(self, path: str, what: str, body: Mapping[str, Any]) -> Any:
        try:
            response = self._http.post(path, content=orjson.dumps(dict(body)),
                                       headers=self._headers())
        except httpx.HTTPError as exc:
            raise StageZeroError(f"{what}: {exc}") from None
        return self._json(response, what)

    def wait_for_approval(self, approval_id: str, timeout: float = 300.0, *,
                          initial_delay: float = 0.5, max_delay: float = 10.0) -> dict[str, Any]:
        """Poll (with backoff) until the request is decided or expired, or ``timeout`` passes.

        Returns the approval; raises :class:`StageZeroError` on timeout.
        """
        deadline = time.monotonic() + timeout
        delay = initial_delay
        while True:
            approval = self.approvals.get(approval_id)
            if approval.get("status") != "pending":
                return approval
            if time.monotonic() + delay > deadline:
                raise StageZeroError(f"approval `{approval_id}` still pending after {timeout} s")
            time.sleep(delay)
            delay = min(max_delay, delay * 2)

    def jwks(self, refresh: bool = False) -> KeySet:
        if refresh or self._jwks.keys is None or time.monotonic() - self._jwks.loaded_at > 300:
            data = self._get("/.well-known/jwks.json", "jwks")
            self._jwks = _Jwks(KeySet.import_key_set(data), time.monotonic(),
                               {k.get("kid") for k in data.get("keys", [])})
        assert self._jwks.keys is not None
        return self._jwks.keys

    def verify_token(self, token: str, action_digest: str) -> dict[str, Any]:
        """Check an execution token offline against the cached JWKS; returns its claims."""
        kid = token_kid(token)
        keys = self.jwks(refresh=kid is not None and kid not in self._jwks.kids)
        return self._verify_with(keys, token, action_digest, time.time())

    def consume_token(self, token: str, action_digest: str) -> dict[str, Any]:
        """Consume the token once; raises :class:`TokenRejected` if it cannot be."""
        try:
            return dict(self._post("/v1/tokens/consume", "consume token",
                                   {"token": token, "action_digest": action_digest}))
        except StageZeroError as exc:
            raise TokenRejected(str(exc), exc.status, exc.body) from None


class _Approvals:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self, status: str | None = "pending") -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        return list(self._c._get("/v1/approvals", "list approvals", **params)["items"])

    def get(self, approval_id: str) -> dict[str, Any]:
        return dict(self._c._get(f"/v1/approvals/{approval_id}", "get approval"))

    def approve(self, approval_id: str, reason: str = "", totp: str | None = None,
                ) -> dict[str, Any]:
        return dict(self._c._post(f"/v1/approvals/{approval_id}/approve", "approve",
                                  {"reason": reason, "totp": totp}))

    def reject(self, approval_id: str, reason: str = "", totp: str | None = None,
               ) -> dict[str, Any]:
        return dict(self._c._post(f"/v1/approvals/{approval_id}/reject", "reject",
                                  {"reason": reason, "totp": totp}))


class AsyncClient(_Base):
    """Asynchronous client with the same behaviour as :class:`Client`."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 5.0, http_client: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, api_key, timeout)
        self._http = http_client or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._owns = http_client is None
        self.approvals = _AsyncApprovals(self)

    async def aclose(self) -> None:
        if self._owns:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def check(self, goal: str | Mapping[str, Any], *, request_id: str | None = None,
                    **fields: Any) -> CheckResult:
        body = request_body(goal, **fields)
        try:
            response = await self._http.post("/check", content=self._encode(body),
                                              headers=self._headers(request_id))
        except httpx.HTTPError as exc:
            return failed_closed("SERVICE_UNAVAILABLE", f"{type(exc).__name__}: {exc}",
                                 request_id=request_id)
        return interpret(response.status_code, response.content, request_id, self.base_url)

    async def _send(self, method: str, path: str, what: str,
                    body: Mapping[str, Any] | None = None, auth: bool = True) -> Any:
        """One call; a network failure is a :class:`StageZeroError`, like the sync client's."""
        try:
            response = await self._http.request(
                method, path, headers=self._headers() if auth else None,
                content=None if body is None else orjson.dumps(dict(body)))
        except httpx.HTTPError as exc:
            raise StageZeroError(f"{what}: {exc}") from None
        return self._json(response, what)

    async def usage(self) -> dict[str, Any]:
        return dict(await self._send("GET", "/usage", "usage"))

    async def get_approval(self, approval_id: str) -> dict[str, Any]:
        return dict(await self._send("GET", f"/v1/approvals/{approval_id}", "get approval"))

    async def list_approvals(self, status: str | None = "pending") -> list[dict[str, Any]]:
        path = "/v1/approvals" + (f"?status={status}" if status else "")
        return list((await self._send("GET", path, "list approvals"))["items"])

    async def approve(self, approval_id: str, reason: str = "",
                      totp: str | None = None) -> dict[str, Any]:
        return dict(await self._send("POST", f"/v1/approvals/{approval_id}/approve", "approve",
                                     {"reason": reason, "totp": totp}))

    async def reject(self, approval_id: str, reason: str = "",
                     totp: str | None = None) -> dict[str, Any]:
        return dict(await self._send("POST", f"/v1/approvals/{approval_id}/reject", "reject",
                                     {"reason": reason, "totp": totp}))

    async def wait_for_approval(self, approval_id: str, timeout: float = 300.0, *,
                                initial_delay: float = 0.5,
                                max_delay: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        delay = initial_delay
        while True:
            approval = await self.get_approval(approval_id)
            if approval.get("status") != "pending":
                return approval
            if time.monotonic() + delay > deadline:
                raise StageZeroError(f"approval `{approval_id}` still pending after {timeout} s")
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)

    async def verify_token(self, token: str, action_digest: str) -> dict[str, Any]:
        kid = token_kid(token)
        if self._jwks.keys is None or (kid is not None and kid not in self._jwks.kids):
            try:
                data = await self._send("GET", "/.well-known/jwks.json", "jwks", auth=False)
            except StageZeroError as exc:
                raise TokenRejected(str(exc), exc.status, exc.body) from None
            self._jwks = _Jwks(KeySet.import_key_set(data), time.monotonic(),
                               {k.get("kid") for k in data.get("keys", [])})
        assert self._jwks.keys is not None
        return self._verify_with(self._jwks.keys, token, action_digest, time.time())

    async def consume_token(self, token: str, action_digest: str) -> dict[str, Any]:
        try:
            return dict(await self._send("POST", "/v1/tokens/consume", "consume token",
                                         {"token": token, "action_digest": action_digest}))
        except StageZeroError as exc:
            raise TokenRejected(str(exc), exc.status, exc.body) from None


class _AsyncApprovals:
    """``AsyncClient.approvals``: the same names as the sync client's, awaitable."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def list(self, status: str | None = "pending") -> list[dict[str, Any]]:
        return await self._c.list_approvals(status)

    async def get(self, approval_id: str) -> dict[str, Any]:
        return await self._c.get_approval(approval_id)

    async def approve(self, approval_id: str, reason: str = "",
                      totp: str | None = None) -> dict[str, Any]:
        return await self._c.approve(approval_id, reason, totp)

    async def reject(self, approval_id: str, reason: str = "",
                     totp: str | None = None) -> dict[str, Any]:
        return await self._c.reject(approval_id, reason, totp)
