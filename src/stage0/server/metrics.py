"""Prometheus metrics. With several workers, prometheus_client's multiprocess mode aggregates
them (``stage0 serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` for its workers)."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

DECISIONS = Counter(
    "stage0_decisions_total", "Answered /check requests by verdict and bucket",
    ["verdict", "bucket"],
)
FAIL_CLOSED = Counter(
    "stage0_fail_closed_total", "Answers that failed closed (DENY with decision ERROR or 503)",
    ["reason"],
)
REFUSED = Counter(
    "stage0_refused_total",
    "Requests refused before evaluation (key, plan, quota, scope, repeated request id, rate) "
    "and refused approval, break-glass and token operations, by status and route template",
    ["status", "route"],
)
REFUSAL_STATUSES = frozenset({401, 402, 403, 409, 415, 429})
"""The statuses ``stage0_refused_total`` counts (a 4xx that is neither an answer nor a 404)."""
AUTH_FAILURES = Counter(
    "stage0_auth_failures_total",
    "Failed authentications (an API key that is unknown or revoked), by surface: `api` "
    "(x-api-key on any route) or `console` (the sign-in form)",
    ["surface"],
)
AUTH_BACKOFF = Counter(
    "stage0_auth_backoff_total",
    "Requests refused by the authentication back-off (429 AUTH_BACKOFF, or the console's "
    "429 sign-in page), by what was backing off: `source` (the client address) or `key`",
    ["scope"],
)
LATENCY = Histogram(
    "stage0_check_seconds", "Latency of /check, request received to answer ready",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
COMMIT_SECONDS = Histogram(
    "stage0_audit_commit_seconds", "Time to write and commit one batch of the decision log",
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
BATCH_SIZE = Histogram(
    "stage0_audit_batch_size", "Decisions per committed batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
POLICY_RELOADS = Counter(
    "stage0_policy_reloads_total", "Policy pack reloads, applied or refused", ["result"])
POLICY_INFO = Gauge(
    "stage0_policy_info", "The policy pack serving (value 1)", ["policy_version", "sha256"],
    multiprocess_mode="liveall",
)
QUEUE_DEPTH = Gauge(
    "stage0_audit_queue_depth",
    "Requests waiting for the decision log writer (sampled as each batch starts)",
    multiprocess_mode="livesum",
)
# -- #16 item 1: policy distribution through the store (server/reload.py StorePolicy) --------
POLICY_GENERATION = Gauge(
    "stage0_policy_generation",
    "The store policy generation this process serves (0: a pack file or the built-in pack)",
    multiprocess_mode="liveall",
)
POLICY_ACTIVE_GENERATION = Gauge(
    "stage0_policy_active_generation",
    "The store's active policy generation, as this process last read it (0: none pushed)",
    multiprocess_mode="livemax",
)
POLICY_DRIFT = Gauge(
    "stage0_policy_drift",
    "1 while this process does not serve the store's active policy (drifting, or it does not "
    "load here), else 0",
    multiprocess_mode="liveall",
)
POLICY_REPLICAS_DRIFTING = Gauge(
    "stage0_policy_replicas_drifting",
    "Live replicas (heartbeats in the store) not serving the active policy, as this process "
    "last read them",
    multiprocess_mode="livemax",
)
# -- end #16 item 1 ---------------------------------------------------------------------------
# -- #16 item 3: approvals, tokens, webhooks, loop limits, per-route latency ------------------
APPROVALS_CREATED = Counter(
    "stage0_approvals_created_total",
    "Approval requests created (a DEFER that needs approval, a break-glass declaration), by "
    "kind: `approval` or `break_glass`", ["kind"],
)
APPROVALS_DECIDED = Counter(
    "stage0_approvals_decided_total",
    "Approval requests decided, by decision: `approved` (the quorum was reached, or a "
    "break-glass declaration) or `rejected`", ["decision"],
)
APPROVALS_EXPIRED = Counter(
    "stage0_approvals_expired_total", "Approval requests that expired undecided")
APPROVAL_DECISION_SECONDS = Histogram(
    "stage0_approval_decision_seconds",
    "Time from an approval request's creation to its decision (approved or rejected)",
    ["decision"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
)
TOKENS_ISSUED = Counter(
    "stage0_tokens_issued_total", "Execution tokens issued with an ALLOW")
TOKENS_CONSUMED = Counter(
    "stage0_tokens_consumed_total", "Execution tokens consumed (once each)")
TOKENS_REFUSED = Counter(
    "stage0_tokens_refused_total",
    "Token consumptions refused, by reason (the refusal code: `TOKEN_INVALID`, "
    "`TOKEN_ALREADY_CONSUMED`, ...)", ["reason"],
)
WEBHOOK_DELIVERIES = Counter(
    "stage0_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome: `delivered` (a 2xx), `retry` (failed, tried again "
    "later) or `failed` (failed for good)", ["outcome"],
)
LOOP_LIMIT_HITS = Counter(
    "stage0_loop_limit_hits_total",
    "Decisions that found a run over a loop limit, by issue code (`LOOP_ITERATION_LIMIT`, "
    "`LOOP_TIMEOUT`, `LOOP_SAME_TOOL_LIMIT`)", ["code"],
)
HTTP_SECONDS = Histogram(
    "stage0_http_request_seconds",
    "Latency of HTTP requests, request received to response sent, by route template, method "
    "and status class (`2xx`, `4xx`, ...); `POST /check` is `stage0_check_seconds`",
    ["route", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
LOOP_CODES = frozenset({"LOOP_ITERATION_LIMIT", "LOOP_TIMEOUT", "LOOP_SAME_TOOL_LIMIT"})

_route_children: dict[tuple[str, str, str], Any] = {}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_route(route: str, method: str, status: int, seconds: float) -> None:
    """One HTTP request's latency (a bounded label set: route templates, not paths)."""
    label = (route, method if method in _METHODS else "OTHER", f"{status // 100}xx")
    child = _route_children.get(label)
    if child is None:
        child = _route_children[label] = HTTP_SECONDS.labels(*label)
    child.observe(seconds)


def count_webhook(outcome: str) -> None:
    """One webhook delivery attempt (``store/webhooks.py``'s ``Deliverer.on_attempt``)."""
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()


class Tally:
    """What one decision batch counts (approvals, tokens, loop limits), held until the batch
    commits: a batch that fails, or is decided again under another policy, counts nothing of
    its first attempt. The writer :meth:`clear` s it as a batch starts and :meth:`flush` es it
    after the commit; the handlers add to it (integers, so the hot path pays an addition)."""

    __slots__ = ("events", "tokens_issued")

    def __init__(self) -> None:
        self.tokens_issued = 0
        self.events: list[tuple[Any, float | None]] = []
        """(a metric's child, a histogram's observation or ``None`` for a count of 1)."""

    def clear(self) -> None:
        self.tokens_issued = 0
        if self.events:
            self.events = []

    def add(self, child: Any, observed: float | None = None) -> None:
        self.events.append((child, observed))

    def flush(self) -> None:
        if self.tokens_issued:
            TOKENS_ISSUED.inc(self.tokens_issued)
        for child, observed in self.events:
            if observed is None:
                child.inc()
            else:
                child.observe(observed)
        self.clear()

    # what the handlers count
    def approval_created(self, kind: str = "approval") -> None:
        self.add(APPROVALS_CREATED.labels(kind=kind))

    def approval_decided(self, decision: str, created_us: object, now_us: int) -> None:
        self.add(APPROVALS_DECIDED.labels(decision=decision))
        if isinstance(created_us, int):
            self.add(APPROVAL_DECISION_SECONDS.labels(decision=decision),
                     max(0.0, (now_us - created_us) / 1e6))

    def approval_expired(self) -> None:
        self.add(APPROVALS_EXPIRED)

    def token_consumed(self) -> None:
        self.add(TOKENS_CONSUMED)

    def token_refused(self, reason: str) -> None:
        self.add(TOKENS_REFUSED.labels(reason=reason))

    def loop_limits(self, issues: list[Any]) -> None:
        """Count the loop-limit issues among a decision's ``issues``."""
        for issue in issues:
            code = issue.get("code")
            if code in LOOP_CODES:
                self.add(LOOP_LIMIT_HITS.labels(code=code))
METRICS_AUTH_ENV = "STAGE0_METRICS_AUTH"
METRICS_TOKEN_ENV = "STAGE0_METRICS_TOKEN"
METRICS_AUTH_MODES = ("none", "token", "key")


@dataclass(frozen=True, slots=True)
class MetricsAccess:
    """Who may read ``/metrics`` (``STAGE0_METRICS_AUTH``): ``none`` (anyone), ``token`` (a
    bearer token equal to ``STAGE0_METRICS_TOKEN``) or ``key`` (an API key with the
    ``audit:read`` or ``admin`` scope). Default: ``token`` when a token is set, else ``none``."""

    mode: str = "none"
    token: str | None = None

    @classmethod
    def from_env(cls) -> MetricsAccess:
        token = os.environ.get(METRICS_TOKEN_ENV, "").strip() or None
        mode = os.environ.get(METRICS_AUTH_ENV, "").strip().lower() or (
            "token" if token else "none")
        if mode not in METRICS_AUTH_MODES:
            raise ValueError(f"{METRICS_AUTH_ENV} must be one of "
                             f"{', '.join(METRICS_AUTH_MODES)}, not {mode!r}")
        if mode == "token" and token is None:
            raise ValueError(f"{METRICS_AUTH_ENV}=token needs {METRICS_TOKEN_ENV}")
        return cls(mode, token)

    def token_matches(self, authorization: str | None) -> bool:
        """Whether ``authorization`` is ``Bearer <the token>`` (compared in constant time)."""
        if self.token is None or not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self.token.encode())


# -- end #16 item 3 ---------------------------------------------------------------------------


_children: dict[tuple[str, str], Any] = {}
_refusal_children: dict[tuple[int, str], Any] = {}


def count_refusal(status: int, route: str) -> None:
    """Count one refusal answered with ``status`` on ``route`` (its template, ``/check``,
    ``/v1/approvals/{approval_id}/approve``: a bounded label set). Only refusals pay for it."""
    child = _refusal_children.get((status, route))
    if child is None:
        child = _refusal_children[(status, route)] = REFUSED.labels(status=str(status),
                                                                    route=route)
    child.inc()


def count_answer(verdict: str, buckets: list[str], *, fail_closed: bool = False) -> None:
    """Count one logged answer (a 422 rejection counts as DENY with bucket ``none``)."""
    for bucket in buckets or ["none"]:
        child = _children.get((verdict, bucket))
        if child is None:
            child = _children[(verdict, bucket)] = DECISIONS.labels(verdict=verdict, bucket=bucket)
        child.inc()
    if fail_closed:
        FAIL_CLOSED.labels(reason="evaluation").inc()


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
