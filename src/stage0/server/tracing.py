"""OpenTelemetry traces: a span per decision (``POST /check``, AuthZEN evaluations), approval
vote, break-glass declaration and token consumption, as a child of the caller's W3C trace
context (``traceparent``/``tracestate``), exported by OTLP over HTTP.

Off unless an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``STAGE0_OTLP_ENDPOINT``); off, the decision path
pays one read of :data:`ENABLED` and makes no span objects. The OpenTelemetry SDK and exporter
are the optional extra ``stage0-authz[otel]``, imported only here and only when tracing is on.

The writer decides in batches on its own thread: the HTTP handler extracts the caller's
context into a :class:`Trace` carried on the :class:`~stage0.server.jobs.Job`, the check
handler leaves the decision's body on it, and the span is made once the answer is back (on the
event loop, not in the writer's turn), from the instant the request arrived to the answer.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from stage0 import __version__

if TYPE_CHECKING:
    from stage0.server.jobs import Job, Outcome

log = logging.getLogger("stage0.tracing")

ENABLED = False
"""Whether spans are made (read on the hot path: a module attribute, nothing else)."""
ENDPOINT_ENV = "STAGE0_OTLP_ENDPOINT"
"""Stage0's own setting: the OTLP/HTTP base URL (``/v1/traces`` is added)."""
_STANDARD_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
MISSING_EXTRA = ("tracing is configured ({}) but the OpenTelemetry SDK is not installed: "
                 "pip install 'stage0-authz[otel]'")

_tracer: Any = None
_provider: Any = None
_owned = False
"""Whether :func:`start_from_env` made the provider (and so shuts it down)."""
_trace_api: Any = None

SPAN_NAMES = {"approve": "stage0.approval.approve", "reject": "stage0.approval.reject",
              "break_glass": "stage0.break_glass", "consume": "stage0.token.consume"}


class Trace:
    """One request's trace: the caller's context, when it arrived, and what its decision
    reported (set by the check handler in the writer's thread)."""

    __slots__ = ("body", "context", "start_ns")

    def __init__(self, context: Any, start_ns: int) -> None:
        self.context = context
        self.start_ns = start_ns
        self.body: Mapping[str, Any] | None = None


def configured_endpoint() -> tuple[str, str | None] | None:
    """``(the variable, the endpoint)`` that turns tracing on, or ``None``. The standard
    variables are read by the exporter itself (``None``: leave it to them)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    own = os.environ.get(ENDPOINT_ENV, "").strip()
    if own:
        base = own.rstrip("/")
        return ENDPOINT_ENV, base if base.endswith("/v1/traces") else base + "/v1/traces"
    for name in _STANDARD_ENVS:
        if os.environ.get(name, "").strip():
            return name, None
    return None


def missing_extra() -> str | None:
    """What is wrong when tracing is configured but the ``otel`` extra is not installed (for
    ``stage0 serve`` to say before it starts anything), else ``None``."""
    found = configured_endpoint()
    if found is None:
        return None
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: PLC0415
        import opentelemetry.sdk.trace  # noqa: F401, PLC0415
    except ImportError:
        return MISSING_EXTRA.format(found[0])
    return None


def start_from_env() -> bool:
    """Turn tracing on when an endpoint is configured (a process that already traces, a
    test's provider, is left as it is). Raises ``RuntimeError`` when one is configured but the
    ``otel`` extra is not installed: tracing that was asked for is not dropped silently.
    Whether it made the provider (then :func:`shutdown` flushes it)."""
    global _owned  # noqa: PLW0603 - one provider per process
    if ENABLED:
        return False
    found = configured_endpoint()
    if found is None:
        return False
    name, endpoint = found
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError as exc:
        raise RuntimeError(MISSING_EXTRA.format(name)) from exc
    attributes: dict[str, str] = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "stage0"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    install(provider)
    _owned = True
    log.info("tracing: spans exported by OTLP/HTTP to %s", endpoint or f"${name}")
    return True


def install(provider: Any) -> None:
    """Make spans with ``provider`` (an SDK ``TracerProvider``; tests give one with an
    in-memory exporter)."""
    global ENABLED, _tracer, _provider, _trace_api, _owned  # noqa: PLW0603
    try:
        from opentelemetry import trace as trace_api  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - the SDK brings the API
        raise RuntimeError(MISSING_EXTRA.format("a tracer provider")) from exc
    _trace_api = trace_api
    _provider, _owned = provider, False
    _tracer = provider.get_tracer("stage0", __version__)
    ENABLED = True


def shutdown() -> None:
    """Stop tracing; a provider made here is flushed and shut down."""
    global ENABLED, _tracer, _provider, _owned
    provider, owned = _provider, _owned
    ENABLED, _tracer, _provider, _owned = False, None, None, False
    if provider is not None and owned:
        provider.shutdown()


def begin(header: Callable[[str], str | None], started: float | None = None) -> Trace | None:
    """The request's trace (its ``traceparent``/``tracestate`` extracted), or ``None`` when
    tracing is off. ``started``: when the request arrived (``time.perf_counter``)."""
    if not ENABLED:
        return None
    from opentelemetry import propagate  # noqa: PLC0415 - installed with the provider

    carrier = {name: value for name in ("traceparent", "tracestate", "baggage")
               if (value := header(name))}
    now_ns = time.time_ns()
    if started is not None:
        now_ns -= int((time.perf_counter() - started) * 1e9)
    return Trace(propagate.extract(carrier) if carrier else None, now_ns)


def _set_status(span: Any, status: int, failed: bool, detail: str | None = None) -> None:
    span.set_attribute("http.response.status_code", status)
    if failed:
        span.set_status(_trace_api.Status(_trace_api.StatusCode.ERROR, detail))


def _body_of(outcome: Outcome) -> dict[str, Any]:
    body = outcome.body
    if isinstance(body, bytes):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return body


def finish_check(job: Job, outcome: Outcome, route: str = "/check") -> None:
    """The decision's span, after its answer (``job.trace`` is set)."""
    trace = job.trace
    if trace is None or _tracer is None:
        return
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "stage0.request_id": job.request_id,
        "stage0.route": route,
    }
    request = job.request
    if request is not None:
        tools = list(request.tools or ())
        ctx = request.context
        tool = (ctx.current_tool if ctx is not None and ctx.current_tool else None) or (
            tools[0] if len(tools) == 1 else None)
        if tool:
            attributes["gen_ai.tool.name"] = tool
        if tools:
            attributes["stage0.tools"] = tools
        call_id = (ctx.model_extra or {}).get("tool_call_id") if ctx is not None else None
        if isinstance(call_id, str) and call_id:
            attributes["gen_ai.tool.call.id"] = call_id
        if ctx is not None and ctx.run_id:
            attributes["stage0.run_id"] = ctx.run_id
    if job.key is not None:
        attributes["stage0.tenant"] = job.key.tenant_id
    body = trace.body if trace.body is not None else _body_of(outcome)
    _decision_attributes(attributes, body)
    span = _tracer.start_span("stage0.check", context=trace.context,
                              kind=_trace_api.SpanKind.SERVER, start_time=trace.start_ns,
                              attributes=attributes)
    failed = outcome.status >= 500 or body.get("decision") == "ERROR"
    _set_status(span, outcome.status, failed, str(body.get("detail") or "") or None)
    span.end()


def _decision_attributes(attributes: dict[str, Any], body: Mapping[str, Any]) -> None:
    for key, name in (("verdict", "stage0.verdict"), ("decision", "stage0.decision"),
                      ("policy_version", "stage0.policy_version"),
                      ("risk_score", "stage0.risk_score"), ("environment", "stage0.environment"),
                      ("action_digest", "stage0.action_digest"), ("code", "stage0.code")):
        value = body.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            attributes[name] = value
    if body.get("cached"):
        attributes["stage0.cached"] = True
    buckets = body.get("buckets")
    if isinstance(buckets, list) and buckets:
        attributes["stage0.buckets"] = [str(b) for b in buckets]
    issues = body.get("issues")
    if isinstance(issues, list) and issues:
        attributes["stage0.issue_codes"] = [str(i.get("code")) for i in issues
                                            if isinstance(i, dict)]
    approval = body.get("approval")
    if isinstance(approval, dict) and approval.get("approval_id"):
        attributes["stage0.approval_id"] = str(approval["approval_id"])


def finish_operation(job: Job, outcome: Outcome, trace: Trace, route: str) -> None:
    """The span of an approval vote, a break-glass declaration or a token consumption."""
    if _tracer is None:
        return
    body = _body_of(outcome)
    attributes: dict[str, Any] = {"stage0.request_id": job.request_id, "stage0.route": route,
                                  "stage0.operation": job.op}
    if job.key is not None:
        attributes["stage0.tenant"] = job.key.tenant_id
    approval_id = job.payload.get("approval_id") or (
        body.get("approval_id") if job.op in ("approve", "reject", "break_glass") else None)
    if approval_id:
        attributes["stage0.approval_id"] = str(approval_id)
    if job.op == "break_glass" and job.payload.get("request_id"):
        attributes["stage0.decision_request_id"] = str(job.payload["request_id"])
    if isinstance(body.get("status"), str):
        attributes["stage0.approval.status"] = body["status"]
    if job.op == "consume":
        if body.get("jti"):
            attributes["stage0.token.jti"] = str(body["jti"])
        digest = body.get("action_digest") or job.payload.get("action_digest")
        if digest:
            attributes["stage0.action_digest"] = str(digest)
    if isinstance(body.get("code"), str):
        attributes["stage0.code"] = body["code"]
    span = _tracer.start_span(SPAN_NAMES.get(job.op, f"stage0.{job.op}"), context=trace.context,
                              kind=_trace_api.SpanKind.SERVER, start_time=trace.start_ns,
                              attributes=attributes)
    _set_status(span, outcome.status, outcome.status >= 500,
                str(body.get("detail") or "") or None)
    span.end()
