"""#16 item 3: structured logs. With ``STAGE0_LOG_FORMAT=json`` every line a served process
writes on stderr — start-up, uvicorn's, the access log, Stage0's — is one JSON object, and each
line about a request carries the ``request_id`` it was answered with
(docs/operations.md#logs)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from stage0.cli.main import cli
from stage0.server import logs
from stage0.server.logs import JsonFormatter
from tests.helpers import request
from tests.service.conftest import Api, free_port, fresh_database


def record(name: str = "stage0.pipeline", msg: str = "hello %s", args: object = ("world",),
           **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args,  # type: ignore[arg-type]
                             None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_a_record_is_one_json_object_on_one_line() -> None:
    line = JsonFormatter().format(record(msg="two\nlines %s"))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "warning"
    assert out["logger"] == "stage0.pipeline"
    assert out["event"] == "two\nlines world"
    assert out["ts"].endswith("Z")
    assert "request_id" not in out


def test_the_request_id_comes_from_the_context_or_the_record() -> None:
    token = logs.REQUEST_ID.set("rid-from-context")
    try:
        assert json.loads(JsonFormatter().format(record()))["request_id"] == "rid-from-context"
        explicit = record(request_id="rid-from-extra", tenant="acme")
        out = json.loads(JsonFormatter().format(explicit))
        assert (out["request_id"], out["tenant"]) == ("rid-from-extra", "acme")
    finally:
        logs.REQUEST_ID.reset(token)


def test_exceptions_and_access_lines_are_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record(msg="failed", args=())
        failed.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(failed))
    assert "ValueError: boom" in out["exception"]
    access = record("uvicorn.access", '%s - "%s %s HTTP/%s" %d',
                    ("127.0.0.1:5000", "GET", "/healthz", "1.1", 200))
    out = json.loads(JsonFormatter().format(access))
    assert (out["method"], out["path"], out["status"], out["client"]) == (
        "GET", "/healthz", 200, "127.0.0.1:5000")


def test_the_format_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGE0_LOG_FORMAT", raising=False)
    assert logs.log_format() == "text"
    monkeypatch.setenv("STAGE0_LOG_FORMAT", "JSON")
    assert logs.log_format() == "json"
    monkeypatch.setenv("STAGE0_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="STAGE0_LOG_FORMAT"):
        logs.log_format()
    result = CliRunner().invoke(cli, ["serve", "--port", "0"])
    assert result.exit_code != 0
    assert "STAGE0_LOG_FORMAT must be one of text, json" in result.output


@pytest.mark.parametrize("workers", [1, 2])
def test_a_served_process_logs_json_lines_with_request_ids(tmp_path: Path, workers: int) -> None:
    with fresh_database("sqlite", tmp_path) as url:
        port = free_port()
        log = tmp_path / "server.log"
        env = {**os.environ, "STAGE0_LOG_FORMAT": "json"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "stage0", "serve", "--port", str(port), "--db", url,
                 "--workers", str(workers), "--access-log"],
                stdout=subprocess.DEVNULL, stderr=out, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            mine = str(uuid.uuid4())
            ids = {
                httpx.post(f"{base}/check", json=request(), timeout=10,
                           headers={"x-api-key": "nope", "x-request-id": mine}
                           ).headers["x-request-id"],
                httpx.post(f"{base}/check", json=request(), timeout=10,
                           headers={"x-api-key": "nope"}).headers["x-request-id"],
                httpx.get(f"{base}/usage", timeout=10).headers["x-request-id"],
                httpx.get(f"{base}/v1/decisions/x", timeout=10,
                          headers={"x-request-id": "not-a-uuid"}).headers["x-request-id"],
            }
            assert mine in ids
            assert len(ids) == 4
            time.sleep(0.5)
        finally:
            process.terminate()
            process.wait(timeout=30)
        lines = log.read_text().splitlines()
    parsed = []
    for line in lines:
        out = json.loads(line)  # every line: one JSON object
        assert {"ts", "level", "logger", "event"} <= set(out), out
        parsed.append(out)
    loggers = {p["logger"] for p in parsed}
    assert {"stage0.serve", "uvicorn.error", "uvicorn.access"} <= loggers
    served = [p for p in parsed if p["logger"] == "stage0.serve"]
    assert any(p["event"].startswith("serving  http://") for p in served)
    access = [p for p in parsed if p["logger"] == "uvicorn.access"]
    by_path = {(p["method"], p["path"].split("?")[0]): p for p in access}
    assert {p["request_id"] for p in access if p["path"] != "/readyz"} == ids
    assert by_path[("GET", "/usage")]["status"] == 401
    assert all("request_id" in p for p in access)  # /readyz's too
    assert not any(p["logger"].startswith("alembic") for p in parsed)  # info chatter: off


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, object]]]:
    """JSON logs on in this process: what Stage0's loggers write, parsed."""
    lines: list[dict[str, object]] = []

    class Collect(logging.Handler):
        def emit(self, made: logging.LogRecord) -> None:
            lines.append(json.loads(JsonFormatter().format(made)))

    handler = Collect()
    logger = logging.getLogger("stage0")
    logger.addHandler(handler)
    monkeypatch.setattr(logs, "ENABLED", True)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def test_a_routed_failure_is_logged_with_the_id_it_is_answered_with(
        api: Api, json_logs: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch) -> None:
    from stage0.server.routes import check  # noqa: PLC0415

    def broken(*_: object) -> None:
        raise RuntimeError("the usage window broke")

    monkeypatch.setattr(check.Windows, "at", broken)
    client = TestClient(api.client.app, raise_server_exceptions=False)  # already started
    for headers in ({}, {"x-request-id": str(uuid.uuid4())}):
        failed = client.get("/usage", headers={"x-api-key": api.key, **headers})
        assert failed.status_code == 500
        line = next(p for p in json_logs if p["event"] == "internal error")
        json_logs.clear()
        assert line["request_id"] == failed.headers["x-request-id"] == failed.json()["request_id"]
        assert "the usage window broke" in str(line["exception"])


def test_a_batch_of_evaluations_keeps_one_id_per_evaluation(
        api: Api, json_logs: list[dict[str, object]]) -> None:
    item = {"subject": {"type": "agent", "id": "agent-7"}, "action": {"name": "ticket_search"},
            "resource": {"type": "tool", "id": "ticket_search"},
            "context": {"goal": "Summarize yesterday's support tickets",
                        "success_criteria": ["A summary is posted"]}}
    response = api.client.post("/access/v1/evaluations", headers={"x-api-key": api.key},
                               json={"evaluations": [item, item, item]})
    assert response.status_code == 200, response.text
    ids = [e["context"]["request_id"] for e in response.json()["evaluations"]]
    assert len(set(ids)) == 3
