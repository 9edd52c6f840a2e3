"""#16 item 2: OpenTelemetry spans for decisions, approval votes, break-glass and token
consumption, children of the caller's W3C trace context, with the GenAI tool-call attributes
where they fit — collected in process by the SDK's in-memory exporter, on SQLite and
PostgreSQL; tracing off (the default) makes no spans; OTLP export from the environment
(docs/operations.md#traces)."""

from __future__ import annotations

import gzip
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from stage0.server import tracing
from stage0.store import Store
from stage0.store.keys import create_key
from tests.helpers import request
from tests.service.conftest import Api, fresh_database, running_app, start_server
from tests.service.test_approvals import PAYOUT as APPROVAL_PAYOUT

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PAYOUT = {**APPROVAL_PAYOUT,
          "context": {**APPROVAL_PAYOUT["context"], "tool_call_id": "call_42"}}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.shutdown()
        provider.shutdown()


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    exporter.clear()
    return found[0]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in (span.attributes or {}).items()}


def child_of_the_caller(span: ReadableSpan) -> None:
    assert span.context is not None
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.parent.is_remote


def test_a_decision_span_is_a_child_of_the_callers_trace(api: Api,
                                                         spans: InMemorySpanExporter) -> None:
    response = api.check(request(context={"tool_call_id": "call_7"}), traceparent=TRACEPARENT)
    body = response.json()
    span = only(spans, "stage0.check")
    child_of_the_caller(span)
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    a = attrs(span)
    assert a["gen_ai.operation.name"] == "execute_tool"
    assert a["gen_ai.tool.name"] == "ticket_search"
    assert a["gen_ai.tool.call.id"] == "call_7"
    assert a["stage0.request_id"] == body["request_id"] == response.headers["x-request-id"]
    assert a["stage0.verdict"] == body["verdict"] == "ALLOW"
    assert a["stage0.decision"] == "GO"
    assert a["stage0.policy_version"] == body["policy_version"]
    assert a["stage0.tenant"] == "default"
    assert a["stage0.risk_score"] == body["risk_score"]
    assert a["http.response.status_code"] == 200
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.start_time <= span.end_time


def test_approval_vote_and_token_spans(api: Api, spans: InMemorySpanExporter) -> None:
    _, agent = create_key(api.store, tenant="default", name="agent", scopes=["check"],
                          principal="agent-7", plan="pro", unlimited=True)
    _, alice = create_key(api.store, tenant="default", name="alice", scopes=["approve"],
                          principal="alice", plan="pro", unlimited=True)
    deferred = api.check(PAYOUT, key=agent, traceparent=TRACEPARENT).json()
    span = only(spans, "stage0.check")
    a = attrs(span)
    approval_id = deferred["approval"]["approval_id"]
    assert (a["stage0.verdict"], a["stage0.approval_id"]) == ("DEFER", approval_id)
    assert "APPROVAL_REQUIRED_PENDING" in a["stage0.issue_codes"]
    assert a["gen_ai.tool.call.id"] == "call_42"
    assert a["stage0.buckets"] == deferred["buckets"]

    voted = api.client.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "ok"},
                            headers={"x-api-key": alice, "traceparent": TRACEPARENT})
    assert voted.status_code == 200
    span = only(spans, "stage0.approval.approve")
    child_of_the_caller(span)
    a = attrs(span)
    assert (a["stage0.approval_id"], a["stage0.approval.status"]) == (approval_id, "approved")
    assert a["stage0.tenant"] == "default"
    assert a["http.response.status_code"] == 200

    allowed = api.check({**PAYOUT, "context": {**PAYOUT["context"], "approval_id": approval_id}},
                        key=agent).json()
    assert allowed["verdict"] == "ALLOW"
    root = only(spans, "stage0.check")
    assert root.parent is None  # no traceparent: a trace of its own

    def consume() -> int:
        return api.client.post("/v1/tokens/consume", json={
            "token": allowed["execution_token"], "action_digest": allowed["action_digest"]},
            headers={"x-api-key": agent, "traceparent": TRACEPARENT}).status_code

    assert consume() == 200
    span = only(spans, "stage0.token.consume")
    child_of_the_caller(span)
    a = attrs(span)
    assert a["stage0.token.jti"] == allowed["request_id"]
    assert a["stage0.action_digest"] == allowed["action_digest"]
    assert consume() == 409
    a = attrs(only(spans, "stage0.token.consume"))
    assert (a["stage0.code"], a["http.response.status_code"]) == ("TOKEN_ALREADY_CONSUMED", 409)

    rejected = api.client.post(f"/v1/approvals/{approval_id}/reject", json={"reason": "no"},
                               headers={"x-api-key": alice})
    assert rejected.status_code == 409
    a = attrs(only(spans, "stage0.approval.reject"))
    assert a["stage0.code"] == "APPROVAL_ALREADY_DECIDED"


def test_refusals_and_failures_have_spans_too(api: Api, spans: InMemorySpanExporter) -> None:
    refused = api.check(request(), key="sk_nope", traceparent=TRACEPARENT)
    assert refused.status_code == 401
    span = only(spans, "stage0.check")
    child_of_the_caller(span)
    assert attrs(span)["http.response.status_code"] == 401
    assert attrs(span)["stage0.code"] == "API_KEY_INVALID"
    # a body that is not a valid request: logged as rejected (422), and traced
    invalid = api.check({"goal": ""})
    assert invalid.status_code == 422
    a = attrs(only(spans, "stage0.check"))
    assert (a["stage0.verdict"], a["http.response.status_code"]) == ("DENY", 422)


def test_the_authzen_front_door_is_traced(api: Api, spans: InMemorySpanExporter) -> None:
    response = api.client.post("/access/v1/evaluation", headers={
        "x-api-key": api.key, "traceparent": TRACEPARENT}, json={
        "subject": {"type": "agent", "id": "agent-7"},
        "action": {"name": "ticket_search"},
        "resource": {"type": "tool", "id": "ticket_search"},
        "context": {"goal": "Summarize yesterday's support tickets",
                    "success_criteria": ["A summary is posted"]}})
    if response.status_code == 404:
        pytest.skip("no AuthZEN evaluation route at this path")
    span = only(spans, "stage0.check")
    child_of_the_caller(span)
    assert attrs(span)["stage0.route"] != "/check"


def test_tracing_off_makes_no_spans(api: Api) -> None:
    assert not tracing.ENABLED
    assert tracing.begin(lambda _: TRACEPARENT) is None
    assert api.check(request(), traceparent=TRACEPARENT).status_code == 200


# -- export from the environment ------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("STAGE0_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED",
                 "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    tracing.shutdown()


def test_no_endpoint_no_tracing(clean_env: pytest.MonkeyPatch) -> None:
    assert tracing.configured_endpoint() is None
    assert tracing.start_from_env() is False
    assert not tracing.ENABLED


def test_an_endpoint_turns_otlp_export_on(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STAGE0_OTLP_ENDPOINT", "http://collector.example:4318/")
    assert tracing.configured_endpoint() == ("STAGE0_OTLP_ENDPOINT",
                                             "http://collector.example:4318/v1/traces")
    assert tracing.start_from_env() is True
    assert tracing.ENABLED
    resource = tracing._provider.resource.attributes
    assert resource["service.name"] == "stage0"
    tracing.shutdown()
    assert not tracing.ENABLED
    clean_env.delenv("STAGE0_OTLP_ENDPOINT")
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.example:4318")
    assert tracing.configured_endpoint() == ("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    clean_env.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configured_endpoint() is None


def test_an_endpoint_without_the_extra_is_a_clear_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.example:4318")
    clean_env.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(RuntimeError, match=r"stage0-authz\[otel\]"):
        tracing.start_from_env()
    assert not tracing.ENABLED


def test_a_break_glass_declaration_has_its_span(db_url: str,
                                                spans: InMemorySpanExporter) -> None:
    from tests.service.test_break_glass import DEPLOY, REASON, SATURDAY, People  # noqa: PLC0415

    with running_app(db_url, frozen_time=SATURDAY) as api:
        p = People(api)
        held = api.check(DEPLOY, key=p.agent, traceparent=TRACEPARENT).json()
        assert attrs(only(spans, "stage0.check"))["stage0.verdict"] == "DEFER"
        declared = api.client.post("/v1/break-glass", headers={
            "x-api-key": p.irene, "traceparent": TRACEPARENT}, json={
            "request_id": held["request_id"], "reason": REASON})
        assert declared.status_code == 200, declared.text
        span = only(spans, "stage0.break_glass")
        child_of_the_caller(span)
        a = attrs(span)
        assert a["stage0.decision_request_id"] == held["request_id"]
        assert a["stage0.approval_id"] == declared.json()["approval_id"]
        assert a["stage0.approval.status"] == "approved"


# -- a real OTLP/HTTP export from `stage0 serve` ---------------------------------------------


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/traces":
            self.received.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_stage0_serve_exports_spans_by_otlp(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: PLC0415
        ExportTraceServiceRequest,
    )

    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    _Collector.received.clear()
    try:
        with fresh_database("sqlite", tmp_path) as url:
            store = Store(url)
            store.migrate()
            _, key = create_key(store, tenant="default", name="agent", scopes=["check"],
                                plan="pro", unlimited=True)
            store.dispose()
            server = start_server(url, tmp_path, env={
                "STAGE0_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
                "OTEL_SERVICE_NAME": "stage0-test", "OTEL_BSP_SCHEDULE_DELAY": "100"})
            try:
                answered = httpx.post(f"{server.url}/check", json=request(), timeout=10,
                                      headers={"x-api-key": key, "traceparent": TRACEPARENT})
                assert answered.status_code == 200
                found: list[Any] = []
                deadline = time.monotonic() + 20
                while not found and time.monotonic() < deadline:
                    for payload in list(_Collector.received):
                        export = ExportTraceServiceRequest.FromString(payload)
                        for resource_spans in export.resource_spans:
                            service = {a.key: a.value.string_value
                                       for a in resource_spans.resource.attributes}
                            for scope in resource_spans.scope_spans:
                                found += [(service, s) for s in scope.spans
                                          if s.name == "stage0.check"]
                    time.sleep(0.1)
            finally:
                server.stop()
    finally:
        collector.shutdown()
        collector.server_close()
    assert found, server.log.read_text()
    service, span = found[0]
    assert service["service.name"] == "stage0-test"
    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_ID
    verdict = {a.key: a.value.string_value for a in span.attributes}["stage0.verdict"]
    assert verdict == answered.json()["verdict"]
