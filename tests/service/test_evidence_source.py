"""Issue #15: the evidence source — rollback-plan and ticket references confirmed by an HTTP
lookup, made before the check is queued — against a local server on loopback: found, not found,
not valid, an error status, a body that is not JSON, a timeout and a refused connection (each of
the last four fails closed). Then through the service: the decision, the log and the execution
token say which evidence was only the caller's."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import orjson
import pytest
from fastapi.testclient import TestClient

from stage0.app import Settings, create_app
from stage0.contract import parse_request
from stage0.engine.evidence import EvidenceCache, HttpEvidenceSource, references
from stage0.policy import load_policy
from stage0.server.evidence import EvidenceSettings
from stage0.store import Store
from stage0.store.keys import create_key
from tests.service.conftest import free_port, fresh_database

SECRET = "Bearer evidence-secret"
SLOW_S = 1.5


class _Evidence(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        parts = self.path.split("/")  # /evidence/<kind>/<ref>
        ref = unquote(parts[-1])
        if self.headers.get("Authorization") != SECRET:
            return self._send(401, b'{"error": "unauthorised"}')
        if ref == "RB-SLOW":
            time.sleep(SLOW_S)
        if ref in ("RB-1", "CHG-7", "RB 1/2"):
            return self._send(200, b'{"valid": true}')
        if ref == "RB-OLD":
            return self._send(200, b'{"valid": false, "reason": "superseded by RB-2"}')
        if ref == "RB-500":
            return self._send(500, b"oops")
        if ref == "RB-JUNK":
            return self._send(200, b"<html>login</html>")
        return self._send(404, b'{"error": "not found"}')

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up (the timeout case)
            self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def evidence_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Evidence)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/evidence/{{kind}}/{{ref}}"
    server.shutdown()
    server.server_close()


def _lookup(url: str, refs: list[tuple[Any, str]], *, timeout_s: float = 0.5,
            auth: str | None = SECRET) -> EvidenceCache:
    cache = EvidenceCache()
    source = HttpEvidenceSource(url, cache, timeout_s=timeout_s,
                                headers={"Authorization": auth} if auth else None)

    async def run() -> None:
        try:
            await source.prefetch("default", refs)
        finally:
            await source.aclose()

    asyncio.run(run())
    return cache


@pytest.mark.parametrize(("ref", "state", "detail"), [
    ("RB-1", "valid", ""),
    ("RB 1/2", "valid", ""),  # the reference is URL-encoded into one path segment
    ("RB-404", "not_found", "not known to the evidence source"),
    ("RB-OLD", "invalid", "superseded by RB-2"),
    ("RB-500", "unavailable", "HTTP 500"),
    ("RB-JUNK", "unavailable", "the answer is not JSON"),
    ("RB-SLOW", "unavailable", "no answer within 0.5 s"),
])
def test_lookup_answers(evidence_url: str, ref: str, state: str, detail: str) -> None:
    started = time.monotonic()
    # only the slow reference meets the short timeout: a loaded machine may take longer than
    # 0.5 s for the first answer of a fresh client, which is not what the others test
    found = _lookup(evidence_url, [("rollback_plan", ref)],
                    timeout_s=0.5 if ref == "RB-SLOW" else 2.0).lookup(
        "default", "rollback_plan", ref)
    assert found is not None
    assert (found.state, found.detail) == (state, detail)
    if ref == "RB-SLOW":
        assert time.monotonic() - started < SLOW_S  # the timeout bounds the wait


def test_lookup_sends_the_auth_header_and_encodes_the_reference(evidence_url: str) -> None:
    _Evidence.seen.clear()
    _lookup(evidence_url, [("rollback_plan", "RB 1/2"), ("ticket", "CHG-7")])
    assert sorted(_Evidence.seen) == [("/evidence/rollback_plan/RB%201%2F2", SECRET),
                                      ("/evidence/ticket/CHG-7", SECRET)]
    refused = _lookup(evidence_url, [("ticket", "CHG-7")], auth=None).lookup(
        "default", "ticket", "CHG-7")
    assert refused is not None
    assert refused.state == "unavailable"


def test_a_refused_connection_fails_closed() -> None:
    url = f"http://127.0.0.1:{free_port()}/evidence/{{kind}}/{{ref}}"  # nothing listens
    found = _lookup(url, [("ticket", "CHG-7")]).lookup("default", "ticket", "CHG-7")
    assert found is not None
    assert found.state == "unavailable"


def test_a_fresh_confirmation_is_not_looked_up_again(evidence_url: str) -> None:
    cache = EvidenceCache(ttl_s=60)
    source = HttpEvidenceSource(evidence_url, cache, timeout_s=0.5,
                                headers={"Authorization": SECRET})

    async def run() -> None:
        await source.prefetch("default", [("rollback_plan", "RB-1"), ("rollback_plan", "RB-9")])
        await source.prefetch("default", [("rollback_plan", "RB-1"), ("rollback_plan", "RB-9")])
        await source.aclose()

    _Evidence.seen.clear()
    asyncio.run(run())
    paths = [p for p, _ in _Evidence.seen]
    assert paths.count("/evidence/rollback_plan/RB-1") == 1  # valid: cached
    assert paths.count("/evidence/rollback_plan/RB-9") == 2  # not found: asked again


def test_only_a_verifying_pack_asks_for_references() -> None:
    request = parse_request({"goal": "Deploy it now please", "context": {
        "rollback_plan": "RB-1", "ticket_id": "CHG-7"}})
    assert references(request, [load_policy()]) == []
    assert references(request, [load_policy("strict")]) == [
        ("rollback_plan", "RB-1"), ("ticket", "CHG-7")]
    flag = parse_request({"goal": "Deploy it now please", "context": {"rollback_plan": True}})
    assert references(flag, [load_policy("strict")]) == []


# -- through the service ----------------------------------------------------------------------


PACK = """extends: stage0-policy-pack
name: evidence-test
version: 1.0.0
evidence:
  rollback_plan: verified
"""


def _deploy(plan: object, **context: Any) -> dict[str, Any]:
    return {"goal": "Deploy the payments service to production",
            "success_criteria": ["The new version serves traffic"],
            "tools": ["deploy.production"], "side_effects": ["deployment"],
            "constraints": ["approval required"],
            "context": {"environment": "production", "approval_status": "approved",
                        "rollback_plan": plan, **context}}


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload)
                                                                                 % 4)))
    return claims


@pytest.fixture
def served(tmp_path: Path, evidence_url: str) -> Iterator[tuple[TestClient, str]]:
    pack = tmp_path / "pack.yaml"
    pack.write_text(PACK, "utf-8")
    with fresh_database("sqlite", tmp_path) as url:
        store = Store(url)
        store.migrate()
        _, secret = create_key(store, tenant="default", name="agent",
                               scopes=["check", "audit:read"], plan="pro", unlimited=True,
                               principal="agent-7")
        settings = Settings(db=url, frozen_time="2026-03-17T10:00:00Z", policy=str(pack),
                            evidence=EvidenceSettings(url=evidence_url, timeout_s=0.5,
                                                      auth=SECRET))
        with TestClient(create_app(settings)) as client:
            yield client, secret
        store.dispose()


def test_the_service_confirms_references_before_it_decides(
        served: tuple[TestClient, str]) -> None:
    client, key = served
    headers = {"x-api-key": key}
    allowed = client.post("/check", json=_deploy("RB-1"), headers=headers).json()
    assert allowed["verdict"] == "ALLOW", allowed["reason"]
    checks = allowed["guardrail_checks"]
    assert checks["rollback"]["verified"] is True
    # the approval was only the caller's word: the response, the log and the token say so
    assert checks["evidence"] == {"caller_asserted": ["approval"], "verified": ["rollback"]}
    assert "CALLER_ASSERTED_EVIDENCE" in [i["code"] for i in allowed["issues"]]
    claims = _claims(allowed["execution_token"])
    assert claims["caller_asserted"] == ["approval"]
    assert claims["approval_verified"] is False
    logged = client.get(f"/v1/decisions/{allowed['request_id']}", headers=headers).json()
    response = logged["response"]
    response = orjson.loads(response) if isinstance(response, str) else response
    assert response["guardrail_checks"]["evidence"]["caller_asserted"] == ["approval"]
    assert "CALLER_ASSERTED_EVIDENCE" in [i["code"] for i in response["issues"]]

    for plan, code in (("RB-404", "ROLLBACK_PLAN_UNVERIFIED"),
                       ("RB-OLD", "ROLLBACK_PLAN_UNVERIFIED"),
                       (True, "ROLLBACK_PLAN_UNVERIFIED"),
                       ("RB-500", "EVIDENCE_UNAVAILABLE"),
                       ("RB-SLOW", "EVIDENCE_UNAVAILABLE")):
        d = client.post("/check", json=_deploy(plan), headers=headers).json()
        assert d["verdict"] == "DEFER", (plan, d["reason"])
        assert code in [i["code"] for i in d["issues"]], (plan, d["reason"])
        assert "execution_token" not in d


def test_an_unknown_key_causes_no_lookup(served: tuple[TestClient, str]) -> None:
    client, _ = served
    _Evidence.seen.clear()
    r = client.post("/check", json=_deploy("RB-1"), headers={"x-api-key": "sk_nope"})
    assert r.status_code == 401
    assert _Evidence.seen == []
