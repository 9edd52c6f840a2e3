"""Three real ``stage0 serve`` replicas on one fresh PostgreSQL database: a push while requests
flow switches them together (after the first answer under the new pack, none under the old
one: in the decision log's order and in what clients saw), ``/readyz``, ``/metrics`` and
``stage0 policy status`` show every replica's version, and a pack the replicas cannot load
fails them closed until one they can is pushed.

Load goes to 127.0.0.1 only, bounded in time; the servers stop in ``finally``.
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from stage0.cli.main import cli
from stage0.store import Store, policies
from stage0.store.keys import create_key
from stage0.store.schema import decisions
from tests.helpers import request
from tests.service.conftest import Server, fresh_database, start_server
from tests.service.test_policy_push import pack_text

OLD, NEW, FIXED = "stage0-policy-pack@1.0.0", "acme@2.0.0", "acme@2.0.2"
ENV = {"STAGE0_POLICY_POLL_S": "0.3", "STAGE0_POLICY_DRIFT_GRACE_S": "2"}


@dataclass(frozen=True)
class Seen:
    replica: int
    sent: float
    received: float
    status: int
    policy_version: str | None


def _serve(db_url: str, tmp_path: Path) -> Server:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return start_server(db_url, tmp_path, env=ENV)


def _load(servers: list[Server], key: str, stop: threading.Event, seen: list[Seen],
          worker: int) -> None:
    """Round-robin checks to the replicas until ``stop``; what each answered, and when."""
    clients = [httpx.Client(base_url=s.url, timeout=20) for s in servers]
    try:
        i = worker
        while not stop.is_set():
            replica = i % len(servers)
            i += 1
            sent = time.monotonic()
            try:
                answer = clients[replica].post("/check", json=request(),
                                               headers={"x-api-key": key})
                status, version = answer.status_code, answer.json().get("policy_version")
            except (httpx.HTTPError, ValueError) as exc:  # recorded: the test says what failed
                status, version = -1, f"{type(exc).__name__}: {exc}"
            seen.append(Seen(replica, sent, time.monotonic(), status, version))
    finally:
        for client in clients:
            client.close()


def _until(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _why(servers: list[Server], seen: list[Seen]) -> str:
    """What the replicas answered, and the end of their logs (for a failed assertion)."""
    answers = Counter((s.status, s.policy_version) for s in seen)
    logs = "\n".join(s.log.read_text(errors="replace")[-1500:] for s in servers)
    return f"answers: {dict(answers)}\n{logs}"


def _metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name)


def test_three_replicas_switch_together_show_drift_and_fail_closed(tmp_path: Path) -> None:
    with fresh_database("postgresql", tmp_path) as url:
        store = Store(url)
        store.migrate()
        key = create_key(store, tenant="default", name=f"k-{uuid.uuid4().hex[:6]}",
                         scopes=["check", "audit:read", "admin"], plan="pro", unlimited=True,
                         principal="fleet-test")[1]
        servers: list[Server] = []
        try:
            servers = [_serve(url, tmp_path) for _ in range(3)]
            seen: list[Seen] = []
            stop = threading.Event()
            load = [threading.Thread(target=_load, args=(servers, key, stop, seen, w))
                    for w in range(4)]
            for thread in load:
                thread.start()
            try:
                assert _until(lambda: sum(s.status == 200 for s in seen) >= 60), _why(
                    servers, seen)
                pushed_at = time.monotonic()
                policies.push(store, pack_text("2.0.0"), pushed_by="fleet-test", now_us=1)
                assert _until(lambda: sum(s.policy_version == NEW and s.sent > pushed_at
                                          for s in seen) >= 90), _why(servers, seen)
            finally:
                stop.set()
                for thread in load:
                    thread.join(timeout=30)

            assert all(s.status == 200 for s in seen), _why(servers, seen)
            assert {s.policy_version for s in seen} == {OLD, NEW}
            for replica in range(3):  # every replica answered under both
                assert {s.policy_version for s in seen if s.replica == replica} == {OLD, NEW}
            # what clients saw: no request sent after a new answer came back got the old pack
            first_new = min(s.received for s in seen if s.policy_version == NEW)
            late_old = [s for s in seen if s.policy_version == OLD and s.sent > first_new]
            assert late_old == []
            # the decision log: commit order (the id) and evaluation instants agree
            with store.connect() as conn:
                rows = conn.execute(select(decisions.c.id, decisions.c.policy_version,
                                           decisions.c.created_us)
                                    .order_by(decisions.c.id)).all()
            assert len(rows) == len(seen)
            versions = [r.policy_version for r in rows]
            cut = versions.index(NEW)
            assert set(versions[:cut]) == {OLD}
            assert set(versions[cut:]) == {NEW}
            assert (max(r.created_us for r in rows if r.policy_version == OLD)
                    < min(r.created_us for r in rows if r.policy_version == NEW))

            # /readyz, the metrics and `stage0 policy status` show every replica's version
            def all_serving() -> bool:
                for server in servers:
                    ready = httpx.get(f"{server.url}/readyz", timeout=5).json()
                    fleet = ready["fleet"]
                    if (ready["status"] != "ready" or fleet["state"] != "serving"
                            or len(fleet["replicas"]) != 3 or fleet["drifting"]):
                        return False
                return True

            assert _until(all_serving)
            for server in servers:
                ready = httpx.get(f"{server.url}/readyz", timeout=5).json()
                assert ready["policy_version"] == NEW
                assert ready["fleet"]["generation"] == 1
                assert {r["policy_version"] for r in ready["fleet"]["replicas"]} == {NEW}
                assert _metric(server, "stage0_policy_generation") == 1
                assert _metric(server, "stage0_policy_active_generation") == 1
                assert _metric(server, "stage0_policy_drift") == 0
                assert _metric(server, "stage0_policy_replicas_drifting") == 0
            result = CliRunner().invoke(cli, ["policy", "status", "--db", url, "--format",
                                              "json", "--wait", "5"])
            assert result.exit_code == 0, result.output
            status = orjson.loads(result.output)
            assert len(status["replicas"]) == 3
            assert status["drifting"] == []
            assert {r["generation"] for r in status["replicas"]} == {1}

            # a pack the replicas cannot load (a newer Stage0's): each fails closed
            policies.store_unchecked(store, pack_text("2.0.1") + "\nfuture_setting: 1\n",
                                     policy_version="acme@2.0.1", pushed_by="fleet-test",
                                     now_us=2)
            with httpx.Client(timeout=20) as client:
                for server in servers:
                    answer = client.post(f"{server.url}/check", json=request(),
                                         headers={"x-api-key": key})
                    assert answer.status_code == 503, answer.text
                    body = answer.json()
                    assert body["verdict"] == "DENY"
                    assert body["decision"] == "ERROR"
                    assert "does not load on this replica" in body["detail"]

                def all_failed() -> bool:
                    for server in servers:
                        ready = client.get(f"{server.url}/readyz")
                        fleet = ready.json()["fleet"]
                        if (ready.status_code != 503 or fleet["state"] != "failed"
                                or len(fleet["drifting"]) != 3):
                            return False
                    return True

                assert _until(all_failed)
                assert all(_metric(s, "stage0_policy_drift") == 1 for s in servers)
                result = CliRunner().invoke(cli, ["policy", "status", "--db", url, "--wait",
                                                  "1"])
                assert (result.exit_code, "DRIFT" in result.output) == (1, True), result.output

                policies.push(store, pack_text("2.0.2"), pushed_by="fleet-test", now_us=3)
                for server in servers:
                    answer = client.post(f"{server.url}/check", json=request(),
                                         headers={"x-api-key": key})
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["policy_version"] == FIXED
            assert _until(all_serving)
        finally:
            for server in servers:
                server.stop()
            store.dispose()
