"""Prometheus metrics. With several workers, prometheus_client's multiprocess mode aggregates
them (``stage0 serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` for its workers)."""

from __future__ import annotations

import os
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
