"""`stage0 mcp-proxy` over streamable HTTP, both ways (issue #14, item 5).

``python -m stage0 mcp-proxy --config ... --listen 127.0.0.1:PORT`` runs as a subprocess in front
of two downstream servers: ``remote``, ``mcp_downstream.py --http`` (the SDK's own streamable-HTTP
app, which refuses any request whose bearer token is not its own), reached by URL with the
gateway's configured credential; and ``local``, the same server over stdio. A real
``stage0 serve`` decides. The clients are the official Python SDK (``mcp.Client`` over
``streamable_http_client``) and the official TypeScript SDK (``StreamableHTTPClientTransport``),
plus plain HTTP requests for the authorization rules: 401 with ``WWW-Authenticate:
Bearer resource_metadata=…``, the RFC 9728 metadata, JWT audience/issuer/expiry checks against a
JWKS served here, and the Origin/Host (DNS rebinding) checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
import yaml
from click.testing import CliRunner
from joserfc import jwt
from joserfc.jwk import RSAKey
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from stage0.cli.main import cli
from stage0.integrations.mcp import META_KEY, GatewayConfig
from stage0.integrations.mcp_config import ConfigError, expand_headers
from stage0.integrations.mcp_http import parse_listen, security_settings
from stage0.sdk import Client as Stage0Client
from tests.integrations.test_mcp import (
    DOWNSTREAM,
    REPO,
    TIME_LIMIT,
    Stage0,
    marker_lines,
    stage0_server,  # noqa: F401 - the module-scoped Stage0 server fixture
)
from tests.integrations.test_mcp_clients import (
    locked_version,
    node,  # noqa: F401 - the npm-installed TypeScript SDK fixture
    run_ts_client,
    ts_text,
)
from tests.service.conftest import free_port

ISSUER = "https://idp.stage0.test"
DOWNSTREAM_TOKEN = "notes-downstream-token-0123456789"
MCP_ACCEPT = {"accept": "application/json, text/event-stream",
              "content-type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "raw-http", "version": "0"}}}


# -- processes -------------------------------------------------------------------------------


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("STAGE0_")}, **extra}


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path, ready: str,
            timeout: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args``; wait until ``ready`` answers HTTP (any status); stop it at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=str(REPO))
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{args[:4]} exited {proc.returncode}:\n{log.read_text()}")
            try:
                httpx.get(ready, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{ready} did not answer:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def downstream_http(marker: Path, log: Path) -> Iterator[str]:
    """``mcp_downstream.py --http``: the remote MCP server, its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with process([sys.executable, str(DOWNSTREAM), str(marker), "--http", str(port),
                  DOWNSTREAM_TOKEN], _env({}), log, url):
        yield url


@contextmanager
def gateway_http(config: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """``stage0 mcp-proxy --config CONFIG --listen 127.0.0.1:PORT``: its MCP endpoint's URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", "stage0", "mcp-proxy", "--config", str(config),
                  "--listen", f"127.0.0.1:{port}"], _env(env), log,
                 f"{base}/.well-known/oauth-protected-resource"):
        yield f"{base}/mcp"


class Jwks:
    """An issuer's JWKS on a loopback port, and tokens signed with its key."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        self.other = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # not published
        body = json.dumps({"keys": [self.key.as_dict(private=False)]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, audience: str | list[str], *, subject: str = "alice@example.com",
              issuer: str = ISSUER, expires_in: float = 300, key: RSAKey | None = None,
              scope: str = "mcp openid") -> str:
        now = int(time.time())
        claims = {"iss": issuer, "sub": subject, "aud": audience, "iat": now,
                  "exp": now + int(expires_in), "client_id": "desktop-client", "scope": scope}
        return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key or self.key)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Http:
    url: str
    stage0: Stage0
    jwks: Jwks
    remote_marker: Path
    local_marker: Path
    log: Path

    @property
    def base(self) -> str:
        return self.url.removesuffix("/mcp")

    def seen_by_remote(self) -> list[str]:
        """Every ``Authorization`` value the remote downstream server received."""
        path = Path(f"{self.remote_marker}.auth")
        values = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
        return [v for v in values if v]  # the start-up probe of this test sends none


def gateway_config(path: Path, stage0: Stage0, remote: str, local_marker: Path,
                   **extra: Any) -> Path:
    """``remote`` over HTTP (its own bearer token), ``local`` over stdio; purge_note needs an
    approval, remove_note is destructive without guardrails (DENY), the rest is read-only."""
    approval = {"constraints": ["approval required"], "success_criteria": ["the note is gone"]}
    path.write_text(yaml.safe_dump({
        "stage0": {"base_url": stage0.url, "context": {"actor_id": "agent-mcp"}},
        "servers": {
            "remote": {"url": remote,
                       "headers": {"Authorization": "Bearer ${NOTES_TOKEN}"},
                       "tools": {"purge_note": approval}},
            "local": {"command": sys.executable, "args": [str(DOWNSTREAM), str(local_marker)]},
        },
        **extra,
    }), "utf-8")
    return path


@pytest.fixture(scope="module")
def http_gateway(stage0_server: Stage0,  # noqa: F811
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    tmp = tmp_path_factory.mktemp("mcp-http")
    remote_marker, local_marker = tmp / "remote.jsonl", tmp / "local.jsonl"
    jwks = Jwks()
    try:
        with downstream_http(remote_marker, tmp / "downstream.log") as remote:
            config = gateway_config(tmp / "gateway.yaml", stage0_server, remote, local_marker,
                                    http={"auth": {"jwt": {"issuer": ISSUER,
                                                           "jwks_url": jwks.url,
                                                           "required_scopes": ["mcp"]}}})
            # the gateway's own Stage0 key (for JWT callers); key callers use theirs
            env = {"STAGE0_API_KEY": stage0_server.agent_key, "NOTES_TOKEN": DOWNSTREAM_TOKEN}
            log = tmp / "gateway.log"
            try:
                with gateway_http(config, env, log) as url:
                    yield Http(url, stage0_server, jwks, remote_marker, local_marker, log)
            except BaseException:
                sys.stderr.write(f"--- mcp-proxy log ---\n{log.read_text('utf-8')}\n")
                raise
    finally:
        jwks.close()


# -- the clients -----------------------------------------------------------------------------


@asynccontextmanager
async def mcp_client(url: str, token: str | None, **kwargs: Any) -> AsyncIterator[Client]:
    """The Python SDK's ``Client`` over its streamable-HTTP transport, with a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers,
                                  timeout=httpx2.Timeout(30, read=120)) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, **kwargs) as client:
            yield client


def run_async(scenario: Any, log: Path) -> None:
    async def bounded() -> None:
        with anyio.fail_after(TIME_LIMIT):
            await scenario()

    try:
        anyio.run(bounded)
    except BaseException:
        sys.stderr.write(f"--- mcp-proxy log ---\n{log.read_text('utf-8')}\n")
        raise


def key_id(stage0: Stage0, key: str) -> str:
    usage = httpx.get(f"{stage0.url}/usage", headers={"x-api-key": key}, timeout=10)
    usage.raise_for_status()
    return str(usage.json()["api_key_id"])


def logged(stage0: Stage0, request_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stage0.url}/v1/decisions/{request_id}", timeout=10,
                         headers={"x-api-key": stage0.auditor_key})
    response.raise_for_status()
    record: dict[str, Any] = response.json()
    return record


def approve(stage0: Stage0, approval_id: str) -> None:
    with Stage0Client(base_url=stage0.url, api_key=stage0.approver_key) as approver:
        assert approver.approvals.approve(approval_id, reason="ok")["status"] == "approved"


def decision_in(result: Any) -> dict[str, Any]:
    assert result.is_error
    assert result.structured_content is None
    info: dict[str, Any] = result.meta[META_KEY]
    return info


# -- authorization ---------------------------------------------------------------------------


def test_no_token_is_a_401_naming_the_resource_metadata(http_gateway: Http) -> None:
    response = httpx.post(http_gateway.url, json=INITIALIZE, headers=MCP_ACCEPT, timeout=10)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    metadata_url = f"{http_gateway.base}/.well-known/oauth-protected-resource/mcp"
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{metadata_url}"' in challenge
    assert 'error="invalid_token"' in challenge

    for url in (metadata_url, f"{http_gateway.base}/.well-known/oauth-protected-resource"):
        metadata = httpx.get(url, timeout=10).json()
        assert metadata["resource"] == http_gateway.url
        assert metadata["authorization_servers"] == [ISSUER]
        assert metadata["bearer_methods_supported"] == ["header"]
        assert metadata["scopes_supported"] == ["mcp"]

    for bad in ("s0_not_a_key", "Basic x"):
        refused = httpx.post(http_gateway.url, json=INITIALIZE, timeout=10,
                             headers={**MCP_ACCEPT, "authorization": f"Bearer {bad}"})
        assert refused.status_code == 401, bad
        assert "resource_metadata=" in refused.headers["www-authenticate"]


def test_jwts_are_checked_for_audience_issuer_expiry_and_signature(http_gateway: Http) -> None:
    jwks, audience = http_gateway.jwks, http_gateway.url

    def status(token: str) -> int:
        return httpx.post(http_gateway.url, json=INITIALIZE, timeout=10,
                          headers={**MCP_ACCEPT, "authorization": f"Bearer {token}"}
                          ).status_code

    assert status(jwks.token(audience)) == 200
    assert status(jwks.token(audience + "/")) == 200  # a trailing slash is the same resource
    assert status(jwks.token(["https://api.example", audience])) == 200  # one of its audiences
    assert status(jwks.token("http://127.0.0.1:1/mcp")) == 401  # minted for another resource
    assert status(jwks.token(http_gateway.stage0.url)) == 401  # for Stage0, not the gateway
    assert status(jwks.token(audience, issuer="https://other.example")) == 401
    assert status(jwks.token(audience, expires_in=-120)) == 401
    assert status(jwks.token(audience, key=jwks.other)) == 401  # not the issuer's key

    # a valid token without the required scope: 403 insufficient_scope, naming the scope
    narrow = httpx.post(http_gateway.url, json=INITIALIZE, timeout=10, headers={
        **MCP_ACCEPT, "authorization": f"Bearer {jwks.token(audience, scope='openid')}"})
    assert narrow.status_code == 403
    challenge = narrow.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="mcp"' in challenge
    assert "resource_metadata=" in challenge


def test_foreign_origins_and_hosts_are_refused(http_gateway: Http) -> None:
    auth = {**MCP_ACCEPT, "authorization": f"Bearer {http_gateway.stage0.other_agent_key}"}
    evil = httpx.post(http_gateway.url, json=INITIALIZE, timeout=10,
                      headers={**auth, "origin": "http://evil.example"})
    assert evil.status_code == 403
    # refused before authentication: no token needed to be turned away
    assert httpx.post(http_gateway.url, json=INITIALIZE, timeout=10,
                      headers={**MCP_ACCEPT, "origin": "http://evil.example"}).status_code == 403
    rebound = httpx.post(http_gateway.url, json=INITIALIZE, timeout=10,
                         headers={**auth, "host": "evil.example:8080"})
    assert rebound.status_code == 421
    local = httpx.post(http_gateway.url, json=INITIALIZE, timeout=10,
                       headers={**auth, "origin": http_gateway.base})
    assert local.status_code == 200


# -- the Python SDK client -------------------------------------------------------------------


def test_python_sdk_client_with_a_stage0_key(http_gateway: Http) -> None:
    """A Stage0 key as the bearer token: the gateway checks with that key (the decision log
    names it), and reaches the remote server with the remote's own token, never the caller's."""
    stage0 = http_gateway.stage0
    caller = stage0.other_agent_key
    note = "http-key-note"

    async def scenario() -> None:
        async with mcp_client(http_gateway.url, caller, mode="legacy") as client:
            assert client.protocol_version == "2025-11-25"
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"remote__echo", "remote__purge_note", "local__echo"} <= tools

            read = await client.call_tool("remote__read_note", {"note": "two words"})
            assert not read.is_error
            assert read.structured_content == {"note": "two words", "words": 2}
            local = await client.call_tool("local__echo", {"text": "hi"})
            assert not local.is_error

            denied = decision_in(await client.call_tool("remote__remove_note", {"note": note}))
            assert denied["verdict"] == "DENY"
            record = logged(stage0, denied["request_id"])
            assert record["key_id"] == key_id(stage0, caller)  # asked with the caller's key
            assert record["tools"] == ["remote.remove_note"]

            deferred = decision_in(await client.call_tool("remote__purge_note", {"note": note}))
            assert deferred["verdict"] == "DEFER"
            await anyio.to_thread.run_sync(approve, stage0, deferred["approval_id"])
            done = await client.call_tool("remote__purge_note", {"note": note})
            assert not done.is_error, done
            assert done.structured_content == {"note": note, "purged": True}

    run_async(scenario, http_gateway.log)
    remote = [m for m in marker_lines(http_gateway.remote_marker) if m["arguments"].get("note")
              in ("two words", note)]
    assert [m["tool"] for m in remote] == ["read_note", "purge_note"]
    seen = http_gateway.seen_by_remote()
    assert seen
    assert set(seen) == {f"Bearer {DOWNSTREAM_TOKEN}"}  # no passthrough
    assert not any(caller in value for value in seen)


def test_a_jwt_caller_is_checked_with_the_gateway_key_as_the_actor(http_gateway: Http) -> None:
    stage0 = http_gateway.stage0
    token = http_gateway.jwks.token(http_gateway.url, subject="bob@example.com")

    async def scenario() -> None:
        async with mcp_client(http_gateway.url, token, mode="legacy") as client:
            echo = await client.call_tool("remote__echo", {"text": "from bob"})
            assert not echo.is_error
            denied = decision_in(await client.call_tool("remote__remove_note",
                                                        {"note": "jwt-note"}))
            record = logged(stage0, denied["request_id"])
            assert record["key_id"] == key_id(stage0, stage0.agent_key)  # the gateway's key
            context = record["request"]["context"]
            assert context["actor_id"] == "bob@example.com"
            assert context["mcp_client_id"] == "desktop-client"

    run_async(scenario, http_gateway.log)
    assert token not in "".join(http_gateway.seen_by_remote())


def test_a_session_is_tied_to_the_credential_that_opened_it(http_gateway: Http) -> None:
    """Another caller's token on the same ``Mcp-Session-Id`` finds no session (the SDK's rule)."""
    stage0 = http_gateway.stage0
    opened = httpx.post(http_gateway.url, json=INITIALIZE, timeout=10, headers={
        **MCP_ACCEPT, "authorization": f"Bearer {stage0.other_agent_key}"})
    assert opened.status_code == 200
    session = opened.headers["mcp-session-id"]
    other = httpx.post(http_gateway.url, timeout=10,
                       json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                       headers={**MCP_ACCEPT, "authorization": f"Bearer {stage0.agent_key}",
                                "mcp-session-id": session,
                                "mcp-protocol-version": "2025-11-25"})
    assert other.status_code == 404


# -- the TypeScript SDK client ---------------------------------------------------------------


def test_typescript_sdk_client_over_http(http_gateway: Http, node: str,  # noqa: F811
                                         tmp_path: Path) -> None:
    stage0 = http_gateway.stage0
    plan_calls = [
        {"name": "remote__read_note", "arguments": {"note": "ts words"}},
        {"name": "remote__purge_note", "arguments": {"note": "ts-note"}},
        {"name": "remote__remove_note", "arguments": {"note": "ts-note"}},
    ]
    out = run_ts_client(node, tmp_path, None, stage0, plan_calls, "2025-11-25", http={
        "url": http_gateway.url,
        "headers": {"Authorization": f"Bearer {stage0.other_agent_key}"}})
    assert out["sdkVersion"] == locked_version("@modelcontextprotocol/sdk")
    assert out["protocolVersion"] == "2025-11-25"
    assert out["server"]["name"] == "stage0-mcp-proxy"
    assert {"remote__read_note", "local__echo"} <= {t["name"] for t in out["tools"]}
    calls = {c["name"]: c for c in out["calls"]}
    for call in out["calls"]:
        assert "error" not in call, call
    assert calls["remote__read_note"]["result"]["structuredContent"] == {
        "note": "ts words", "words": 2}
    deferred = calls["remote__purge_note"]["result"]
    assert deferred["isError"] is True
    assert "structuredContent" not in deferred
    info = deferred["_meta"][META_KEY]
    assert info["verdict"] == "DEFER"
    assert info["approval_id"].startswith("apr_")
    assert f"approval_id: {info['approval_id']}" in ts_text(deferred)
    denied = calls["remote__remove_note"]["result"]
    assert denied["_meta"][META_KEY]["verdict"] == "DENY"

    approve(stage0, info["approval_id"])
    out = run_ts_client(node, tmp_path, None, stage0, plan_calls[1:2], "2025-11-25", http={
        "url": http_gateway.url,
        "headers": {"Authorization": f"Bearer {stage0.other_agent_key}"}})
    (done,) = out["calls"]
    assert "error" not in done, done
    assert not done["result"].get("isError"), done
    assert done["result"]["structuredContent"] == {"note": "ts-note", "purged": True}


def test_typescript_sdk_client_without_a_token_is_refused(node: str,  # noqa: F811
                                                          http_gateway: Http,
                                                          tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="invalid_token"):
        run_ts_client(node, tmp_path, None, http_gateway.stage0, [], "2025-11-25",
                      http={"url": http_gateway.url, "headers": {}})


# -- configuration ---------------------------------------------------------------------------


def test_a_downstream_credential_from_an_unset_variable_stops_the_gateway(
    stage0_server: Stage0, tmp_path: Path,  # noqa: F811
) -> None:
    config = gateway_config(tmp_path / "gateway.yaml", stage0_server,
                            "http://127.0.0.1:1/mcp", tmp_path / "local.jsonl")
    env = {k: v for k, v in os.environ.items() if k != "NOTES_TOKEN"}
    result = CliRunner(env=env).invoke(cli, ["mcp-proxy", "--config", str(config),
                                             "--listen", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "`NOTES_TOKEN` is not set" in result.output
    with pytest.raises(ConfigError, match="NOTES_TOKEN"):
        expand_headers("remote", {"Authorization": "Bearer ${NOTES_TOKEN}"}, {})
    assert expand_headers("remote", {"Authorization": "Bearer $T"}, {"T": "x"}) == {
        "Authorization": "Bearer x"}


def test_a_downstream_server_is_a_command_or_a_url() -> None:
    for bad in ({}, {"command": "x", "url": "http://h/mcp"},
                {"command": "x", "headers": {"a": "b"}}, {"url": "http://h/mcp", "args": ["x"]},
                {"url": "ftp://h"}):
        with pytest.raises(ValueError, match="validation error"):
            GatewayConfig.model_validate({"servers": {"s": bad}})
    GatewayConfig.model_validate({"servers": {"s": {"url": "https://h/mcp"}}})
    with pytest.raises(ValueError, match="bearer token"):
        GatewayConfig.model_validate({"servers": {"s": {"command": "x"}},
                                      "http": {"auth": {"stage0_keys": False}}})


def test_listen_addresses() -> None:
    assert parse_listen("8765") == ("127.0.0.1", 8765)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("[::1]:9") == ("::1", 9)
    for bad in ("x", "1:99999", "host:"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    config = GatewayConfig.model_validate({"servers": {"s": {"command": "x"}}})
    public = security_settings(config.http, "0.0.0.0", "https://mcp.example.com/mcp")
    assert public.allowed_hosts == ["mcp.example.com"]  # no loopback names off loopback
    assert public.allowed_origins == ["https://mcp.example.com"]
    local = security_settings(config.http, "127.0.0.1", "http://127.0.0.1:5/mcp")
    assert "localhost:*" in local.allowed_hosts
