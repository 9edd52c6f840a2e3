"""Real ``stage0 serve`` processes: a SIGKILL in the middle of a load, exact usage counters and
run state across two processes on one database, fail closed while the database is down and
recovery without a restart, and ``--workers 2``.

Load goes to 127.0.0.1 only and every test is bounded in time; servers stop in ``finally``.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from stage0.store import Store, ledger
from stage0.store.keys import create_key
from tests.service.conftest import Server, _pg_admin, fresh_database, start_server

FROZEN = "2026-03-17T10:00:30Z"  # 30 s before the next minute: the window cannot roll

CHECK_BODY: dict[str, Any] = {
    "goal": "Summarise yesterday's support tickets into a report for the team",
    "success_criteria": ["a one-page summary exists"],
    "tools": ["tickets.search"],
    "side_effects": [],
    "constraints": [],
    "context": {"environment": "staging"},
}


def _new_key(url: str, tenant: str = "default", **kw: Any) -> str:
    """Migrate the store and create a key (before any server starts, so no bootstrap key)."""
    store = Store(url)
    try:
        store.migrate()
        kw.setdefault("scopes", ["check", "audit:read", "admin"])
        kw.setdefault("principal", "process-test")
        kw.setdefault("plan", "pro")
        if "per_minute" not in kw:
            kw.setdefault("unlimited", True)
        return create_key(store, tenant=tenant, name=f"k-{uuid.uuid4().hex[:6]}", **kw)[1]
    finally:
        store.dispose()


def _serve(db_url: str, tmp_path: Path, **kw: Any) -> Server:
    """``start_server``, minus the ResourceWarning of the log file handle it leaves open."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return start_server(db_url, tmp_path, **kw)


def _stop_all(servers: list[Server]) -> None:
    for server in servers:
        server.stop()


def _log_tail(server: Server) -> str:
    try:
        return server.log.read_text(errors="replace")[-4000:]
    except OSError:
        return "(no log)"


def _parallel(
    n: int, fn: Callable[[int], httpx.Response], threads: int = 8
) -> list[httpx.Response]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, range(n)))


# -- a. SIGKILL during a load loses no acknowledged decision -------------------------------------


def test_sigkill_loses_no_acknowledged_decision(db_url: str, tmp_path: Path) -> None:
    key = _new_key(db_url)
    server = _serve(db_url, tmp_path)
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=5) as http:
            while not stop.is_set():
                rid = str(uuid.uuid4())
                try:
                    r = http.post("/check", json=CHECK_BODY,
                                  headers={"x-api-key": key, "x-request-id": rid})
                except httpx.HTTPError:
                    continue  # the server is gone: this one was never acknowledged
                if r.status_code == 200:
                    try:
                        body = r.json()
                        assert body["request_id"] == rid, body
                        assert body["verdict"] in ("ALLOW", "DEFER", "DENY"), body
                    except BaseException as exc:  # noqa: BLE001 - report in the main thread
                        errors.append(exc)
                    with lock:
                        acked.append(rid)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        with lock:
            in_flight_at_kill = len(acked)
        server.stop(signal.SIGKILL)
        assert server.process.returncode == -signal.SIGKILL
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        server.stop()
    assert not errors, errors
    assert in_flight_at_kill > 20, f"only {in_flight_at_kill} requests acknowledged"
    assert not any(t.is_alive() for t in threads)

    store = Store(db_url)
    try:
        missing = [rid for rid in acked if ledger.get(store, "default", rid) is None]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged decisions are not logged"
        reports = ledger.verify(store)
        assert reports, "no chain to verify"
        assert all(r.ok for r in reports), [r.problems for r in reports]
        assert sum(r.rows for r in reports) >= len(acked)
    finally:
        store.dispose()


# -- b. usage counters exact across two processes -------------------------------------------------


def test_usage_counters_exact_across_processes(db_url: str, tmp_path: Path) -> None:
    key = _new_key(db_url)
    limited = _new_key(db_url, plan="free", per_minute=30)
    servers: list[Server] = []
    try:
        servers = [_serve(db_url, tmp_path, frozen_time=FROZEN) for _ in range(2)]
        clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]

        def post(i: int, secret: str = key) -> httpx.Response:
            return clients[i % 2].post("/check", json=CHECK_BODY, headers={"x-api-key": secret})

        total = 200
        statuses = [r.status_code for r in _parallel(total, post)]
        ok = statuses.count(200)
        assert ok == total, {s: statuses.count(s) for s in set(statuses)}
        for client in clients:
            usage = client.get("/usage", headers={"x-api-key": key})
            assert usage.status_code == 200, usage.text
            body = usage.json()
            assert body["monthly_used"] == ok, body
            assert body["daily_used"] == ok, body
            assert body["minute_used"] == ok, body

        answers = _parallel(60, lambda i: post(i, limited), threads=12)
        codes = [r.status_code for r in answers]
        assert codes.count(200) == 30, {s: codes.count(s) for s in set(codes)}
        assert codes.count(429) == 30, {s: codes.count(s) for s in set(codes)}
        for r in answers:
            if r.status_code == 429:
                body = r.json()
                assert body["retry_after_seconds"] == 30, body  # frozen at hh:mm:30
                assert r.headers["retry-after"] == "30"
                assert body["detail"], body
                assert body["request_id"], body
        usage = clients[1].get("/usage", headers={"x-api-key": limited}).json()
        assert usage["minute_used"] == 30, usage
        assert usage["minute_remaining"] == 0, usage
        assert usage["per_minute_limit"] == 30, usage
        for client in clients:
            client.close()
    finally:
        _stop_all(servers)


# -- c. run state updated atomically across two processes -----------------------------------------


def test_run_state_atomic_across_processes(db_url: str, tmp_path: Path) -> None:
    key = _new_key(db_url)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    body = {**CHECK_BODY, "constraints": ["max_iterations: 1000"],
            "context": {"environment": "staging", "run_id": run_id}}
    servers: list[Server] = []
    try:
        servers = [_serve(db_url, tmp_path) for _ in range(2)]
        clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]

        def post(i: int) -> httpx.Response:
            return clients[i % 2].post("/check", json=body, headers={"x-api-key": key})

        answers = _parallel(40, post)
        assert [r.status_code for r in answers] == [200] * 40, [r.text for r in answers]
        seen = sorted(r.json()["guardrail_checks"]["loop"]["iteration"] for r in answers)
        assert seen == list(range(1, 41)), seen  # every check saw its own iteration

        last = clients[0].post("/check", json=body, headers={"x-api-key": key})
        assert last.status_code == 200, last.text
        loop = last.json()["guardrail_checks"]["loop"]
        assert loop["iteration"] == 41, loop
        assert loop["sources"]["iteration"] == "run_state", loop
        for client in clients:
            client.close()
    finally:
        _stop_all(servers)


# -- d. database down: fail closed, then recovery without a restart -------------------------------


def _assert_fail_closed(http: httpx.Client, key: str) -> None:
    r = http.post("/check", json=CHECK_BODY, headers={"x-api-key": key})
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["verdict"] == "DENY", body
    assert body["decision"] == "ERROR", body
    ready = http.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["problems"], ready.json()


def _wait_recovered(http: httpx.Client, key: str, server: Server, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        last = http.post("/check", json=CHECK_BODY, headers={"x-api-key": key})
        if last.status_code == 200 and http.get("/readyz").status_code == 200:
            assert last.json()["verdict"] == "ALLOW", last.text
            return
        time.sleep(0.2)
    raise AssertionError(f"no recovery: {last.text if last else None}\n{_log_tail(server)}")


def test_postgres_down_fails_closed_then_recovers(tmp_path: Path) -> None:
    with fresh_database("postgresql", tmp_path) as url:
        name = url.rsplit("/", 1)[1]
        key = _new_key(url)
        server = _serve(url, tmp_path)
        pid = server.process.pid
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                first = http.post("/check", json=CHECK_BODY, headers={"x-api-key": key})
                assert first.status_code == 200, first.text
                assert http.get("/readyz").status_code == 200

                with _pg_admin() as admin:
                    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s", (name,))
                try:
                    for _ in range(3):  # a broken pooled connection, then refused reconnects
                        _assert_fail_closed(http, key)
                finally:
                    with _pg_admin() as admin:
                        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

                _wait_recovered(http, key, server)
            assert server.process.poll() is None, _log_tail(server)
            assert server.process.pid == pid
        finally:
            server.stop()
        store = Store(url)
        try:
            assert all(r.ok for r in ledger.verify(store))
        finally:
            store.dispose()


def test_sqlite_locked_fails_closed_then_recovers(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as url:
        key = _new_key(url)
        server = _serve(url, tmp_path, env={"STAGE0_SQLITE_BUSY_TIMEOUT_MS": "300"})
        pid = server.process.pid
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                first = http.post("/check", json=CHECK_BODY, headers={"x-api-key": key})
                assert first.status_code == 200, first.text

                path = url.removeprefix("sqlite:///")
                locker = sqlite3.connect(path, isolation_level=None, timeout=5)
                try:
                    locker.execute("BEGIN EXCLUSIVE")
                    try:
                        for _ in range(2):
                            _assert_fail_closed(http, key)
                    finally:
                        locker.execute("ROLLBACK")
                finally:
                    locker.close()

                _wait_recovered(http, key, server)
            assert server.process.poll() is None, _log_tail(server)
            assert server.process.pid == pid
        finally:
            server.stop()


# -- e. --workers 2 -------------------------------------------------------------------------------


def _decisions_total(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "stage0_decisions_total"
    )


def test_two_workers_answer_and_aggregate_metrics(db_url: str, tmp_path: Path) -> None:
    key = _new_key(db_url)
    server = _serve(db_url, tmp_path, workers=2)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            n = 12
            for _ in range(n):  # a new connection each time, so both workers get some
                r = httpx.post(f"{server.url}/check", json=CHECK_BODY,
                               headers={"x-api-key": key}, timeout=30)
                assert r.status_code == 200, r.text
                assert r.json()["verdict"] == "ALLOW", r.text
            metrics = http.get("/metrics")
            assert metrics.status_code == 200
            assert "stage0_decisions_total" in metrics.text
            assert _decisions_total(metrics.text) == n, metrics.text
    finally:
        server.stop()
