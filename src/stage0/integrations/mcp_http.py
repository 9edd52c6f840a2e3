"""The MCP gateway over streamable HTTP: ``stage0 mcp-proxy --listen HOST:PORT``.

The gateway is an OAuth 2.1 resource server, as the MCP specification's authorization rules
ask of an HTTP server:

- every request to the MCP endpoint needs ``Authorization: Bearer TOKEN``; without one, or with
  a token that does not verify, the answer is 401 with
  ``WWW-Authenticate: Bearer error="invalid_token", …, resource_metadata="<metadata URL>"``;
- the Protected Resource Metadata (RFC 9728) is served at
  ``/.well-known/oauth-protected-resource`` + the endpoint's path (and at the bare
  ``/.well-known/oauth-protected-resource``);
- a token is one of: a **Stage0 API key**, checked with ``GET /usage`` on the Stage0 server (the
  gateway then asks Stage0 *with that key*, so each decision is the caller's own); or a **JWT
  access token** from the configured issuer, verified with the issuer's JWKS (signature,
  ``iss``, ``exp``/``nbf``, and ``aud`` = the gateway's resource URL or the configured
  audience). A JWT is never sent anywhere; the gateway asks Stage0 with its own key and puts the
  token's subject in ``context.actor_id``;
- the client's token is never passed to a downstream server: each downstream server reached
  over HTTP gets only the headers its configuration gives (``servers.<name>.headers``);
- the ``Origin`` and ``Host`` headers are checked on every request (DNS rebinding): a foreign
  ``Origin`` is 403, a foreign ``Host`` 421; the default listen address is 127.0.0.1.

The MCP transport itself is the SDK's (``StreamableHTTPSessionManager``), which also serves
clients on protocol revision 2026-07-28 (one POST per request, no session).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stage0.integrations.mcp_config import ConfigError, HttpAuth, HttpSettings, JwtSettings

log = logging.getLogger("stage0.integrations.mcp")

#: ``AccessToken.claims[AUTH_KIND]``: how the caller authenticated (``stage0_key`` or ``jwt``).
AUTH_KIND = "stage0_auth"
API_KEY_AUTH = "stage0_key"
JWT_AUTH = "jwt"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_JWKS_REFRESH_AFTER = 60.0
_NEGATIVE_CACHE_SECONDS = 5.0
_CACHE_SIZE = 1024
#: What a Stage0 API key looks like (``s0_`` and URL-safe base64); anything else is refused here,
#: without asking Stage0 (where each refused key counts against the gateway's address).
API_KEY_FORMAT = re.compile(r"^s0_[A-Za-z0-9_-]{20,200}$")


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (host 127.0.0.1)."""
    text = value.strip()
    host, _, port = text.rpartition(":")
    host = host or "127.0.0.1"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--listen `{value}`: use HOST:PORT or PORT") from None
    if not 0 < number < 65536:
        raise ConfigError(f"--listen `{value}`: the port must be 1-65535")
    return host, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resource_url(settings: HttpSettings, host: str, port: int) -> str:
    """The gateway's resource identifier: ``http.resource_url``, else its own address."""
    if settings.resource_url:
        return settings.resource_url.rstrip("/")
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{settings.path}"


def security_settings(settings: HttpSettings, host: str,
                      resource: str) -> TransportSecuritySettings:
    """Allowed ``Host`` and ``Origin`` values: the loopback names when bound to loopback, the
    resource URL's own, and the configured ones."""
    parts = urlsplit(resource)
    hosts = [parts.netloc, *settings.allowed_hosts]
    origins = [f"{parts.scheme}://{parts.netloc}", *settings.allowed_origins]
    if is_loopback(host):
        hosts += [f"{name}:*" for name in _LOOPBACK_HOSTS]
        origins += [f"http://{name}:*" for name in _LOOPBACK_HOSTS]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                     allowed_hosts=hosts, allowed_origins=origins)


# -- bearer tokens ---------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class _Cache:
    entries: dict[str, tuple[float, AccessToken | None]] = field(default_factory=dict)

    def get(self, key: str) -> tuple[bool, AccessToken | None]:
        hit = self.entries.get(key)
        if hit is None or hit[0] < time.monotonic():
            self.entries.pop(key, None)
            return False, None
        return True, hit[1]

    def put(self, key: str, value: AccessToken | None, seconds: float) -> None:
        if seconds <= 0:
            return
        if len(self.entries) >= _CACHE_SIZE:
            self.entries.pop(next(iter(self.entries)))
        self.entries[key] = (time.monotonic() + seconds, value)


class Stage0KeyVerifier:
    """A Stage0 API key as a bearer token: valid when ``GET /usage`` with it answers 200."""

    def __init__(self, base_url: str, http: httpx.AsyncClient, cache_seconds: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._cache_seconds = cache_seconds
        self._cache = _Cache()

    async def verify_token(self, token: str) -> AccessToken | None:
        if not API_KEY_FORMAT.match(token):
            return None
        key = _digest(token)
        hit, cached = self._cache.get(key)
        if hit:
            return cached
        try:
            response = await self._http.get(f"{self.base_url}/usage",
                                            headers={"x-api-key": token})
            body = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot check a bearer key with Stage0: %s: %s", type(exc).__name__, exc)
            return None  # not cached: the next request asks again
        if not isinstance(body, dict) or not body.get("api_key_id"):
            log.info("bearer key refused by Stage0 (HTTP %s)", response.status_code)
            self._cache.put(key, None, _NEGATIVE_CACHE_SECONDS)
            return None
        key_id = str(body["api_key_id"])
        access = AccessToken(token=token, client_id=key_id, scopes=[], subject=key_id,
                             claims={"iss": self.base_url, AUTH_KIND: API_KEY_AUTH})
        self._cache.put(key, access, self._cache_seconds)
        return access


def _audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


def _same_resource(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class JwtVerifier:
    """A JWT access token from ``settings.issuer``, verified with its JWKS (joserfc)."""

    def __init__(self, settings: JwtSettings, audience: str, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.audience = settings.audience or audience
        self._http = http
        self._keys: KeySet | None = None
        self._kids: set[str] = set()
        self._loaded_at = 0.0

    async def _keyset(self, kid: str | None) -> KeySet | None:
        stale = time.monotonic() - self._loaded_at > _JWKS_REFRESH_AFTER
        if self._keys is None or (kid is not None and kid not in self._kids and stale):
            try:
                response = await self._http.get(self.settings.jwks_url)
                response.raise_for_status()
                data = response.json()
                self._keys = KeySet.import_key_set(data)
                self._kids = {str(k.get("kid")) for k in data.get("keys", []) if k.get("kid")}
                self._loaded_at = time.monotonic()
            except (httpx.HTTPError, ValueError, JoseError) as exc:
                log.warning("cannot load the JWKS at %s: %s: %s", self.settings.jwks_url,
                            type(exc).__name__, exc)
        return self._keys

    def _kid(self, token: str) -> str | None:
        try:
            header = jws.extract_compact(token.encode()).protected
        except (JoseError, ValueError):
            return None
        kid = header.get("kid")
        return str(kid) if kid is not None else None

    async def verify_token(self, token: str) -> AccessToken | None:
        keys = await self._keyset(self._kid(token))
        if keys is None:
            return None
        try:
            claims = dict(jwt.decode(token, keys, algorithms=self.settings.algorithms).claims)
        except (JoseError, ValueError) as exc:
            log.info("bearer JWT refused: %s", exc)
            return None
        now = time.time()
        leeway = self.settings.leeway
        exp, nbf = claims.get("exp"), claims.get("nbf")
        problems = []
        if claims.get("iss") != self.settings.issuer:
            problems.append("issuer")
        if not any(_same_resource(a, self.audience) for a in _audiences(claims)):
            problems.append("audience")
        if not isinstance(exp, int | float) or exp + leeway <= now:
            problems.append("expiry")
        if nbf is not None and (not isinstance(nbf, int | float) or nbf - leeway > now):
            problems.append("not-before")
        scopes = str(claims.get("scope") or "").split()
        if problems:
            log.info("bearer JWT refused: %s", ", ".join(problems))
            return None
        subject = str(claims["sub"]) if claims.get("sub") is not None else None
        client_id = str(claims.get("client_id") or claims.get("azp") or subject or "")
        return AccessToken(token=token, client_id=client_id, scopes=scopes,
                           expires_at=int(exp) if isinstance(exp, int | float) else None,
                           resource=self.audience, subject=subject,
                           claims={"iss": self.settings.issuer, AUTH_KIND: JWT_AUTH})


class GatewayTokenVerifier:
    """A JWT (three dot-separated parts) goes to the JWT verifier when one is configured;
    anything else to the Stage0 key check when Stage0 keys are accepted."""

    def __init__(self, auth: HttpAuth, audience: str, stage0_base: str,
                 http: httpx.AsyncClient) -> None:
        self.keys = (Stage0KeyVerifier(stage0_base, http, auth.key_cache_seconds)
                     if auth.stage0_keys else None)
        self.jwt = JwtVerifier(auth.jwt, audience, http) if auth.jwt else None

    async def verify_token(self, token: str) -> AccessToken | None:
        if self.jwt is not None and token.count(".") == 2:
            return await self.jwt.verify_token(token)
        if self.keys is not None:
            return await self.keys.verify_token(token)
        return None


# -- the application -------------------------------------------------------------------------


class ScopeGuard:
    """403 ``insufficient_scope`` for a JWT caller whose token lacks a required scope (a Stage0
    key has no OAuth scopes: Stage0 checks its own)."""

    def __init__(self, app: ASGIApp, required: list[str], metadata_url: str) -> None:
        self.app = app
        self.required = required
        self.metadata_url = metadata_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        token = getattr(user, "access_token", None)
        if (self.required and isinstance(token, AccessToken)
                and (token.claims or {}).get(AUTH_KIND) == JWT_AUTH
                and any(s not in token.scopes for s in self.required)):
            needed = " ".join(self.required)
            challenge = (f'Bearer error="insufficient_scope", scope="{needed}", '
                         f'resource_metadata="{self.metadata_url}"')
            response = JSONResponse({"error": "insufficient_scope",
                                     "error_description": f"Required scopes: {needed}"},
                                    status_code=403, headers={"www-authenticate": challenge})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class HostOriginGuard:
    """``Host`` / ``Origin`` validation for every route, before authentication."""

    def __init__(self, app: ASGIApp, settings: TransportSecuritySettings) -> None:
        self.app = app
        self.security = TransportSecurityMiddleware(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = await self.security.validate_request(Request(scope, receive))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def protected_resource_metadata(auth: HttpAuth, resource: str) -> dict[str, Any]:
    """RFC 9728 metadata. ``authorization_servers`` lists the JWT issuer when one is
    configured; a gateway that takes Stage0 keys only has no authorization server to name."""
    metadata: dict[str, Any] = {"resource": resource, "bearer_methods_supported": ["header"],
                                "resource_name": "Stage0 MCP gateway"}
    if auth.jwt is not None:
        metadata["authorization_servers"] = [auth.jwt.issuer]
        if auth.jwt.required_scopes:
            metadata["scopes_supported"] = list(auth.jwt.required_scopes)
    return metadata


def build_app(server: Any, settings: HttpSettings, *, host: str, port: int,
              stage0_base: str, http: httpx.AsyncClient) -> tuple[Starlette, str]:
    """The Starlette application serving ``server`` (a lowlevel MCP ``Server``) at
    ``settings.path``, and the resource URL it answers for."""
    resource = resource_url(settings, host, port)
    security = security_settings(settings, host, resource)
    manager = StreamableHTTPSessionManager(app=server, security_settings=security)
    verifier = GatewayTokenVerifier(settings.auth, resource, stage0_base, http)
    metadata_url = build_resource_metadata_url(AnyHttpUrl(resource))
    scopes = settings.auth.jwt.required_scopes if settings.auth.jwt else []
    endpoint = RequireAuthMiddleware(
        ScopeGuard(StreamableHTTPASGIApp(manager), list(scopes), str(metadata_url)), [],
        metadata_url)
    metadata = protected_resource_metadata(settings.auth, resource)

    async def prm(request: Request) -> Response:
        return JSONResponse(metadata, headers={"cache-control": "public, max-age=3600"})

    well_known = urlsplit(str(metadata_url)).path
    routes = [Route(settings.path, endpoint=endpoint),
              Route(well_known, prm, methods=["GET"])]
    if well_known != "/.well-known/oauth-protected-resource":
        routes.append(Route("/.well-known/oauth-protected-resource", prm, methods=["GET"]))
    app = Starlette(
        routes=routes,
        middleware=[Middleware(HostOriginGuard, settings=security),
                    Middleware(AuthenticationMiddleware, backend=BearerAuthBackend(verifier)),
                    Middleware(AuthContextMiddleware)],
        lifespan=lambda _app: manager.run())
    return app, resource


async def serve_http(server: Any, settings: HttpSettings, listen: str,
                     stage0_base: str) -> None:
    """Serve MCP over streamable HTTP until interrupted."""
    host, port = parse_listen(listen)
    async with httpx.AsyncClient(timeout=10) as http:
        app, resource = build_app(server, settings, host=host, port=port,
                                  stage0_base=stage0_base, http=http)
        if not is_loopback(host) and urlsplit(resource).scheme != "https":
            log.warning("listening on %s without https: put a TLS proxy in front and set "
                        "http.resource_url to its https URL", host)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                lifespan="on", proxy_headers=False)
        log.info("stage0 mcp-proxy: MCP over streamable HTTP at %s", resource)
        await uvicorn.Server(config).serve()


__all__ = ["API_KEY_AUTH", "API_KEY_FORMAT", "AUTH_KIND", "JWT_AUTH", "GatewayTokenVerifier",
           "HostOriginGuard", "JwtVerifier", "ScopeGuard", "Stage0KeyVerifier", "build_app",
           "parse_listen", "protected_resource_metadata", "resource_url", "security_settings",
           "serve_http"]
