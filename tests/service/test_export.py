"""Decision-log export (#16 item 4): every row delivered at least once, in seq order per tenant,
to a webhook, NATS JetStream and an OTLP/HTTP collector — each stopped and restarted while rows
are written — from a position kept in the store; replayable; leased between processes. On
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from stage0.cli.main import cli
from stage0.export import exporter_from_config
from stage0.store import Store, ledger
from stage0.store import export as outbox
from stage0.store.webhooks import verify_signature
from tests.service.conftest import free_port, running_app

SECRET = "whsec_export_test"


def log_rows(store: Store, tenant: str, n: int) -> None:
    """Append ``n`` rows to ``tenant``'s chain, as the decision writer does (one commit)."""
    with store.raw() as conn:
        cursor = conn.cursor()
        chain = ledger.read_head(store, cursor, tenant)
        for _ in range(n):
            seq = chain.seq + 1
            record: ledger.LogRecord = {
                "tenant_id": tenant, "request_id": f"req-{tenant}-{seq}", "key_id": "key_x",
                "kind": "decision", "http_status": 200,
                "verdict": ("ALLOW", "DEFER", "DENY")[seq % 3],
                "decision": ("GO", "DEFER", "NO_GO")[seq % 3],
                "policy_version": "pack@1", "policy_sha256": "0" * 64,
                "input_sha256": "1" * 64, "action_digest": "2" * 64, "environment": None,
                "tools": '["ticket_search"]', "buckets": "[]", "request": '{"goal":"g"}',
                "redacted_paths": "[]", "response": '{"verdict":"ALLOW"}',
                "frozen_time": None, "timings": "{}",
                "created_us": int(time.time() * 1e6),
            }
            ledger.append(chain, record)
        ledger.save(store, cursor, tenant, chain)
        conn.commit()


def config(*sinks: dict[str, Any]) -> outbox.ExportConfig:
    return outbox.ExportConfig.model_validate(
        {"sinks": list(sinks), "backoff_s": 0.05, "max_backoff_s": 0.2, "lease_s": 30})


def drain(exporter: outbox.Exporter, store: Store, *, timeout: float = 20) -> None:
    """Run passes until every cursor has caught up with its chain head."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exporter.run_once()
        states = outbox.cursors(store)
        if states and all(c.lag == 0 for c in states):
            return
        time.sleep(0.05)
    raise AssertionError(f"export did not catch up: {outbox.cursors(store)}")


def assert_in_order(received: list[dict[str, Any]], expected: dict[str, int]) -> None:
    """Nothing lost, nothing reordered per tenant; a duplicate is the same record again."""
    by_id: dict[str, dict[str, Any]] = {}
    firsts: dict[str, list[int]] = {}
    for record in received:
        seen = by_id.get(record["export_id"])
        if seen is not None:
            assert seen == record, "a redelivered record differs from its first delivery"
            continue
        by_id[record["export_id"]] = record
        assert record["export_id"] == f"{record['tenant']}/{record['seq']}"
        firsts.setdefault(record["tenant"], []).append(record["seq"])
    assert firsts == {
        t: list(range(1, n + 1)) for t, n in expected.items()}


# -- a local HTTP receiver that can be stopped and restarted on the same port --------------------


class Receiver:
    def __init__(self, path: str = "/") -> None:
        self.port, self.path = free_port(), path
        self.bodies: list[tuple[dict[str, str], bytes]] = []
        self.fail_next = 0
        """Answer 503 to that many requests after recording them (an acknowledgement lost)."""
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.bodies.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 200
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    status = 503
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def receiving(path: str = "/") -> Iterator[Receiver]:
    receiver = Receiver(path)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def webhook_records(receiver: Receiver) -> list[dict[str, Any]]:
    found = []
    for headers, body in receiver.bodies:
        assert verify_signature(SECRET, headers["stage0-signature"], body, now=time.time())
        assert headers["stage0-event"] == "decision.export"
        batch = orjson.loads(body)
        seqs = [r["seq"] for r in batch["records"]]
        assert headers["stage0-delivery"] == f"{batch['tenant']}/{seqs[0]}-{seqs[-1]}"
        assert {r["tenant"] for r in batch["records"]} == {batch["tenant"]}
        found.extend(batch["records"])
    return found


def test_webhook_sink_stopped_and_restarted_loses_and_reorders_nothing(store: Store) -> None:
    with receiving() as hook:
        exporter = exporter_from_config(store, config(
            {"name": "siem", "type": "webhook", "url": hook.url, "secret": SECRET, "batch": 7}))
        log_rows(store, "acme", 20)
        log_rows(store, "globex", 5)
        drain(exporter, store)
        assert_in_order(webhook_records(hook), {"acme": 20, "globex": 5})

        hook.stop()  # the sink goes away while decisions keep being logged
        log_rows(store, "acme", 15)
        log_rows(store, "globex", 3)
        assert exporter.run_once() == 0
        failing = {c.tenant: c for c in outbox.cursors(store)}
        assert failing["acme"].seq == 20
        assert failing["acme"].attempts == 1
        assert "ConnectError" in (failing["acme"].last_error or "")
        assert failing["globex"].seq == 5
        log_rows(store, "acme", 5)
        time.sleep(0.1)
        assert exporter.run_once() == 0  # still down: retried, the cursor does not move
        assert {c.tenant: c.seq for c in outbox.cursors(store)} == {"acme": 20, "globex": 5}

        hook.start()  # back, on the same port
        hook.fail_next = 1  # and the first batch's acknowledgement is lost: sent again
        drain(exporter, store)
        exporter.close()
    records = webhook_records(hook)
    assert_in_order(records, {"acme": 40, "globex": 8})
    assert len(records) > 48  # the batch whose answer was lost came twice, same ids
    assert all(c.attempts == 0 and c.last_error is None for c in outbox.cursors(store))


def test_a_leased_cursor_is_not_delivered_by_another_process(store: Store) -> None:
    with receiving() as hook:
        sink = {"name": "siem", "type": "webhook", "url": hook.url, "secret": SECRET}
        first = exporter_from_config(store, config(sink), owner="replica-a")
        second = exporter_from_config(store, config(sink), owner="replica-b")
        log_rows(store, "acme", 3)
        first.run_once()
        log_rows(store, "acme", 2)
        assert first._claim("siem", "acme") == 3  # replica a is delivering the next batch
        assert second.run_once() == 0
        assert len(hook.bodies) == 1
        first._release("siem", "acme")
        assert second.run_once() == 2
        first.close()
        second.close()
    assert_in_order(webhook_records(hook), {"acme": 5})


def test_two_exporters_running_at_once_keep_each_tenant_in_order(store: Store) -> None:
    """Two replicas' exporters, each on its own thread, while rows keep being logged."""
    with receiving() as hook:
        sink = {"name": "siem", "type": "webhook", "url": hook.url, "secret": SECRET,
                "batch": 3}
        exporters = [exporter_from_config(store, config(sink), owner=f"replica-{n}")
                     for n in range(2)]
        stop = threading.Event()

        def loop(exporter: outbox.Exporter) -> None:
            while not stop.is_set():
                exporter.run_once()

        threads = [threading.Thread(target=loop, args=(e,)) for e in exporters]
        for thread in threads:
            thread.start()
        try:
            for _ in range(10):
                log_rows(store, "acme", 4)
                log_rows(store, "globex", 2)
                time.sleep(0.02)
            deadline = time.monotonic() + 20
            while any(c.lag for c in outbox.cursors(store)) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            for exporter in exporters:
                exporter.close()
    records = webhook_records(hook)
    assert_in_order(records, {"acme": 40, "globex": 20})
    assert len(records) == 60  # nothing failed, so nothing was delivered twice
    assert sum(e.delivered for e in exporters) == 60


def test_replay_delivers_again_from_a_seq_and_start_latest_skips_the_past(
        store: Store, db_url: str) -> None:
    log_rows(store, "acme", 6)
    with receiving() as hook:
        exporter = exporter_from_config(store, config(
            {"name": "siem", "type": "webhook", "url": hook.url, "secret": SECRET},
            {"name": "tail", "type": "webhook", "url": hook.url, "secret": SECRET,
             "start": "latest", "tenants": ["acme"]}))
        drain(exporter, store)
        assert [c.seq for c in outbox.cursors(store)] == [6, 6]
        assert len(webhook_records(hook)) == 6  # `tail` started at the head

        result = CliRunner().invoke(cli, ["export", "replay", "--db", db_url, "--sink", "siem",
                                          "--tenant", "acme", "--from-seq", "4"])
        assert result.exit_code == 0, result.output
        assert "from seq 6 to 3" in result.output
        drain(exporter, store)
        exporter.close()
    records = webhook_records(hook)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6, 4, 5, 6]
    status = CliRunner().invoke(cli, ["export", "status", "--db", db_url])
    assert status.exit_code == 0
    assert "siem  acme  seq 6/6  lag 0" in status.output
    assert "tail  acme  seq 6/6  lag 0" in status.output


# -- OTLP logs ------------------------------------------------------------------------------------


def test_otlp_logs_sink_stopped_and_restarted(store: Store) -> None:
    with receiving("/v1/logs") as collector:
        exporter = exporter_from_config(store, config(
            {"name": "otel", "type": "otlp", "endpoint": collector.url, "batch": 4,
             "headers": {"authorization": "Bearer t"}}))
        log_rows(store, "acme", 6)
        drain(exporter, store)
        collector.stop()
        log_rows(store, "acme", 5)
        assert exporter.run_once() == 0
        collector.start()
        drain(exporter, store)
        exporter.close()
    received = []
    for headers, body in collector.bodies:
        assert headers["authorization"] == "Bearer t"
        assert headers["content-type"] == "application/json"
        request = orjson.loads(body)
        (resource,) = request["resourceLogs"]
        assert resource["resource"]["attributes"][0] == {
            "key": "service.name", "value": {"stringValue": "stage0"}}
        for entry in resource["scopeLogs"][0]["logRecords"]:
            attrs = {a["key"]: a["value"] for a in entry["attributes"]}
            record = orjson.loads(entry["body"]["stringValue"])
            assert attrs["stage0.seq"] == {"intValue": str(record["seq"])}
            assert attrs["stage0.export_id"] == {"stringValue": record["export_id"]}
            assert entry["severityText"] == {"ALLOW": "INFO", "DEFER": "WARN",
                                             "DENY": "ERROR"}[record["verdict"]]
            assert int(entry["timeUnixNano"]) == round(record["created_at"] * 1e6) * 1000
            received.append(record)
    assert_in_order(received, {"acme": 11})


# -- NATS JetStream -------------------------------------------------------------------------------


class NatsServer:
    """A nats-server of the test's own (JetStream, its own store directory), stopped and
    restarted on the same port: the system's server on 4222 is left alone."""

    def __init__(self, tmp_path: Path) -> None:
        binary = shutil.which("nats-server")
        if binary is None:  # pragma: no cover - the CI image has it
            pytest.fail("nats-server is not installed")
        self.binary, self.port, self.dir = binary, free_port(), tmp_path / "jetstream"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket  # noqa: PLC0415

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def stream_messages(url: str, stream: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every message the stream holds: (subject, Nats-Msg-Id, record), in stream order."""
    import nats  # noqa: PLC0415

    async def read() -> list[tuple[str, str, dict[str, Any]]]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        info = await js.stream_info(stream)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            found.append((msg.subject, (msg.headers or {})["Nats-Msg-Id"],
                          orjson.loads(msg.data or b"null")))
        await nc.close()
        return found

    return asyncio.run(read())


def test_nats_jetstream_sink_stopped_and_restarted(store: Store, tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    server.start()
    try:
        exporter = exporter_from_config(store, config(
            {"name": "js", "type": "nats", "url": server.url, "stream": "DECISIONS_TEST",
             "batch": 5, "timeout_s": 2}))
        log_rows(store, "acme", 12)
        log_rows(store, "globex.eu", 3)  # a dot cannot be in a subject token
        drain(exporter, store)

        server.stop()
        log_rows(store, "acme", 8)
        assert exporter.run_once() == 0
        assert {c.tenant: c.seq for c in outbox.cursors(store)} == {"acme": 12, "globex.eu": 3}
        assert all(c.attempts == 1 for c in outbox.cursors(store) if c.tenant == "acme")

        server.start()  # the same store directory: the stream survives
        drain(exporter, store)
        outbox.replay(store, "js", "acme", 10)  # delivered again: JetStream drops them
        drain(exporter, store)
        exporter.close()
        messages = stream_messages(server.url, "DECISIONS_TEST")
    finally:
        server.stop()
    subjects = {subject for subject, _, _ in messages}
    assert subjects == {"stage0.decisions.acme", "stage0.decisions.globex%2Eeu"}
    assert all(msg_id == record["export_id"] for _, msg_id, record in messages)
    assert_in_order([record for _, _, record in messages], {"acme": 20, "globex.eu": 3})
    assert len(messages) == 23  # the replay within the duplicate window stored nothing twice


def test_a_nats_sink_without_the_extra_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib  # noqa: PLC0415

    from stage0.export import jetstream  # noqa: PLC0415

    real = importlib.import_module

    def missing(name: str, *args: Any) -> Any:
        if name == "nats":
            raise ImportError("No module named 'nats'")
        return real(name, *args)

    monkeypatch.setattr(jetstream.importlib, "import_module", missing)
    with pytest.raises(outbox.ConfigError, match=r"stage0-authz\[nats\]"):
        jetstream.JetStreamSink(outbox.SinkConfig.model_validate({"name": "js", "type": "nats"}))


# -- the server runs it ---------------------------------------------------------------------------


def test_the_server_exports_its_decisions(db_url: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with receiving() as hook:
        path = tmp_path / "export.yaml"
        path.write_text(f"interval_s: 0.05\nsinks:\n  - name: siem\n    type: webhook\n"
                        f"    url: {hook.url}\n    secret_env: EXPORT_TEST_SECRET\n")
        monkeypatch.setenv("STAGE0_EXPORT_CONFIG", str(path))
        monkeypatch.setenv("EXPORT_TEST_SECRET", SECRET)
        with running_app(db_url) as api:
            for n in range(3):
                response = api.check({"goal": f"look up ticket {n}",
                                      "tools": ["ticket_search"]})
                assert response.status_code == 200, response.text
            deadline = time.monotonic() + 10
            while len(webhook_records(hook)) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
    records = webhook_records(hook)
    assert_in_order(records, {"default": 3})
    assert [r["kind"] for r in records] == ["decision"] * 3


def test_a_bad_export_configuration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "export.yaml"
    path.write_text("sinks:\n  - name: a\n    type: kafka\n")
    with pytest.raises(outbox.ConfigError, match="not valid"):
        outbox.load_config(path)
    path.write_text("sinks:\n  - {name: a, type: otlp}\n  - {name: a, type: otlp}\n")
    with pytest.raises(outbox.ConfigError, match="twice"):
        outbox.load_config(path)
    path.write_text("lease_s: 30\nsinks:\n  - {name: a, type: otlp, timeout_s: 11}\n")
    with pytest.raises(outbox.ConfigError, match="a third of lease_s"):
        outbox.load_config(path)


def test_export_run_once_from_the_command_line(store: Store, db_url: str,
                                               tmp_path: Path) -> None:
    log_rows(store, "acme", 3)
    path = tmp_path / "export.yaml"
    with receiving() as hook:
        path.write_text(f"sinks:\n  - {{name: siem, type: webhook, url: '{hook.url}', "
                        f"secret: {SECRET}}}\n")
        result = CliRunner().invoke(cli, ["export", "run", "--db", db_url, "--config",
                                          str(path), "--once"])
        assert result.exit_code == 0, result.output
        assert "3 records delivered" in result.output
        log_rows(store, "acme", 1)
        hook.stop()
        result = CliRunner().invoke(cli, ["export", "run", "--db", db_url, "--config",
                                          str(path), "--once"])
        assert result.exit_code == 1
        assert "0 records delivered" in result.output
        assert "siem  acme: ConnectError" in result.output
    assert_in_order(webhook_records(hook), {"acme": 3})


def test_rows_pruned_before_export_are_skipped_in_order(store: Store) -> None:
    """A cursor left behind a retention boundary (`--ignore-export`) goes on after it."""
    log_rows(store, "acme", 6)
    with store.begin() as conn:  # what `stage0 audit prune --ignore-export` leaves
        conn.execute(text("DELETE FROM decisions WHERE seq <= 4"))
    with receiving() as hook:
        exporter = exporter_from_config(store, config(
            {"name": "siem", "type": "webhook", "url": hook.url, "secret": SECRET}))
        drain(exporter, store)
        exporter.close()
    assert [r["seq"] for r in webhook_records(hook)] == [5, 6]
