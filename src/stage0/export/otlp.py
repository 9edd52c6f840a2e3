"""Export as OpenTelemetry logs: one OTLP/HTTP export request (JSON encoding) per batch.

Each record is a ``LogRecord``: ``timeUnixNano`` the decision's time, severity ``INFO`` for
ALLOW, ``WARN`` for DEFER, ``ERROR`` for DENY (and ``INFO`` for events), ``body`` the record as
JSON text (docs/audit.md), and attributes ``stage0.tenant``, ``stage0.seq``,
``stage0.request_id``, ``stage0.kind``, ``stage0.verdict``, ``stage0.policy_version``,
``stage0.row_hash`` and ``stage0.export_id`` (the collector de-duplicates by it, if at all).
A 2xx answer without rejected records acknowledges the batch. The request is plain JSON over
HTTP (OTLP/HTTP's JSON encoding, port 4318): no OpenTelemetry SDK is needed.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

from stage0 import __version__
from stage0.store.export import ExportError, SinkConfig

SEVERITY = {"ALLOW": (9, "INFO"), "DEFER": (13, "WARN"), "DENY": (17, "ERROR")}
DEFAULT_ENDPOINT = "http://127.0.0.1:4318/v1/logs"


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": "" if value is None else str(value)}}


def log_record(record: dict[str, Any], observed_ns: int) -> dict[str, Any]:
    number, text = SEVERITY.get(record["verdict"], (9, "INFO"))
    return {
        "timeUnixNano": str(round(record["created_at"] * 1e6) * 1000),
        "observedTimeUnixNano": str(observed_ns),
        "severityNumber": number,
        "severityText": text,
        "body": {"stringValue": orjson.dumps(record).decode()},
        "attributes": [
            _attr("stage0.tenant", record["tenant"]), _attr("stage0.seq", record["seq"]),
            _attr("stage0.request_id", record["request_id"]),
            _attr("stage0.kind", record["kind"]), _attr("stage0.verdict", record["verdict"]),
            _attr("stage0.policy_version", record["policy_version"]),
            _attr("stage0.row_hash", record["row_hash"]),
            _attr("stage0.export_id", record["export_id"]),
        ],
    }


class OtlpLogsSink:
    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self._endpoint = config.endpoint or DEFAULT_ENDPOINT
        self._client = httpx.Client(timeout=config.timeout_s, headers=config.headers)

    def request(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        now = time.time_ns()
        return {"resourceLogs": [{
            "resource": {"attributes": [_attr("service.name", self.config.service_name)]},
            "scopeLogs": [{
                "scope": {"name": "stage0.decisions", "version": __version__},
                "logRecords": [log_record(r, now) for r in records],
            }],
        }]}

    def deliver(self, tenant: str, records: list[dict[str, Any]]) -> None:
        del tenant  # in each record's attributes
        try:
            response = self._client.post(self._endpoint, content=orjson.dumps(
                self.request(records)), headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise ExportError(f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise ExportError(f"HTTP {response.status_code}")
        try:
            answer = orjson.loads(response.content or b"{}")
        except orjson.JSONDecodeError:
            answer = {}
        partial = answer.get("partialSuccess") if isinstance(answer, dict) else None
        if not isinstance(partial, dict):
            return
        rejected = int(partial.get("rejectedLogRecords") or 0)
        if rejected:
            raise ExportError(f"the collector rejected {rejected} log records: "
                              f"{partial.get('errorMessage', '')}"[:300])

    def close(self) -> None:
        self._client.close()
