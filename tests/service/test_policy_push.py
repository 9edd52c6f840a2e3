"""Policy distribution through the store, on SQLite and PostgreSQL: ``stage0 policy push``
validates, versions and hashes; refusals say why; a running server switches before its next
commit (the early path included) and fails closed when the active pack does not load there;
the store's pack wins over ``--policy``; ``/readyz`` and ``/metrics`` show the versions."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from stage0.app import Settings, create_app
from stage0.cli.main import cli
from stage0.policy import load_policy
from stage0.policy.loader import default_pack_text
from stage0.server.reload import FleetSettings
from stage0.server.state import state_of
from stage0.store import Store, policies
from stage0.store.keys import create_key
from stage0.store.schema import decisions, policy_versions
from tests.helpers import request
from tests.service.conftest import Api
from tests.service.test_console import Console


def pack_text(version: str, *, name: str = "acme", extra: str = "") -> str:
    """The default pack renamed ``name@version`` (``extra``: changed content, same version)."""
    text = default_pack_text().replace("name: stage0-policy-pack", f"name: {name}", 1)
    text = text.replace("version: 1.0.0", f"version: {version}", 1)
    return text.replace("description: >-", f"description: >-\n  {extra}", 1) if extra else text


def write_pack(tmp_path: Path, version: str, **kw: str) -> Path:
    path = tmp_path / f"pack-{version}-{uuid.uuid4().hex[:4]}.yaml"
    path.write_text(pack_text(version, **kw))
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def count_versions(store: Store) -> int:
    with store.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(policy_versions)).scalar_one())


@contextmanager
def fleet_app(db_url: str, *, policy: str | None = None,
              drift_grace_s: float = 10.0) -> Iterator[Api]:
    """A served app whose poller does not run (``poll_s=0``): only the decision batches' own
    check before each commit switches it, so the tests see that path alone."""
    store = Store(db_url)
    store.migrate()
    _, secret = create_key(store, tenant="default", name="fleet-admin",
                           scopes=["check", "approve", "audit:read", "admin"], plan="pro",
                           unlimited=True, principal="fleet-admin")
    app = create_app(Settings(db=db_url, policy=policy,
                              fleet=FleetSettings(poll_s=0, drift_grace_s=drift_grace_s)))
    with TestClient(app) as client:
        yield Api(client, store, secret)
    store.dispose()


def test_push_validates_versions_hashes_and_refuses_with_clear_errors(
        db_url: str, store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(pack_text("1.0.0").replace("risk_weight: ", "risk_weight: 1000 #", 1))
    code, out = run("policy", "push", str(bad), "--db", db_url)
    assert code == 1, out
    assert "invalid" in out
    assert count_versions(store) == 0

    first = write_pack(tmp_path, "1.0.0")
    code, out = run("policy", "push", str(first), "--db", db_url, "--by", "alice")
    assert code == 0, out
    assert "acme@1.0.0: pushed as generation 1" in out
    active = policies.active_policy(store)
    assert active is not None
    assert active.generation == 1
    assert active.epoch == 1
    assert active.sha256 == load_policy(first).sha256  # the pack's policy_sha256
    [stored] = policies.versions(store)
    assert (stored.policy_version, stored.pushed_by) == ("acme@1.0.0", "alice")

    code, out = run("policy", "push", str(first), "--db", db_url)  # the active content: no-op
    assert (code, "already active" in out, "nothing to push" in out) == (0, True, True), out
    same_text_other_layout = tmp_path / "reformatted.yaml"
    same_text_other_layout.write_text("# a comment changes no hash\n" + first.read_text())
    code, out = run("policy", "push", str(same_text_other_layout), "--db", db_url)
    assert (code, "already active" in out) == (0, True), out

    changed = write_pack(tmp_path, "1.0.0", extra="Changed.")
    code, out = run("policy", "push", str(changed), "--db", db_url)
    assert code == 1, out
    assert "VERSION_CONFLICT" in out
    assert "acme@1.0.0 was pushed before" in out
    assert "bump `version`" in out
    assert count_versions(store) == 1

    second = write_pack(tmp_path, "1.1.0", extra="Changed.")
    code, out = run("policy", "push", str(second), "--db", db_url, "--format", "json")
    assert code == 0, out
    pushed = orjson.loads(out)
    assert pushed["version"]["generation"] == 2
    assert pushed["active"]["previous_generation"] == 1
    assert pushed["version"]["sha256"] == load_policy(second).sha256

    code, out = run("policy", "push", str(first), "--db", db_url)  # stored before: re-activated
    assert (code, "already stored; activated again as generation 1" in out) == (0, True), out
    assert count_versions(store) == 2
    active = policies.active_policy(store)
    assert active is not None
    assert (active.generation, active.epoch) == (1, 3)

    code, out = run("policy", "rollback", "--db", db_url)
    assert (code, "acme@1.1.0 (generation 2) is active" in out) == (0, True), out
    code, out = run("policy", "activate", "acme@1.0.0", "--db", db_url)
    assert (code, "acme@1.0.0 (generation 1) is active" in out) == (0, True), out
    code, out = run("policy", "activate", "1", "--db", db_url)
    assert (code, "already active" in out) == (0, True), out
    code, out = run("policy", "activate", "acme@9.9.9", "--db", db_url)
    assert (code, "UNKNOWN_VERSION" in out) == (1, True), out

    code, out = run("policy", "status", "--db", db_url, "--format", "json")
    assert code == 0, out
    status = orjson.loads(out)
    assert status["active"]["policy_version"] == "acme@1.0.0"
    assert [v["generation"] for v in status["versions"]] == [2, 1]
    assert status["replicas"] == []
    assert status["drifting"] == []
    code, out = run("policy", "status", "--db", db_url)
    assert (code, "active: acme@1.0.0 (generation 1)" in out) == (0, True), out


def test_a_running_server_switches_before_its_next_commit_early_decisions_included(
        db_url: str) -> None:
    with fleet_app(db_url) as api:
        writer = state_of(api.client.app).pipeline
        assert api.check(request()).json()["policy_version"] == "stage0-policy-pack@1.0.0"
        assert api.check(request()).json()["policy_version"] == "stage0-policy-pack@1.0.0"
        assert writer.stats.early_used >= 1  # the key is known: checks are decided early
        policies.push(api.store, pack_text("2.0.0"), pushed_by="t", now_us=1)
        early = writer.stats.early_evaluations
        answer = api.check(request())
        assert answer.status_code == 200
        assert writer.stats.early_evaluations == early + 1  # decided early under 1.0.0 …
        body = answer.json()
        assert body["policy_version"] == "acme@2.0.0"  # … but answered under the active pack
        assert body["policy_sha256"] == policies.active_policy(api.store).sha256  # type: ignore[union-attr]
        assert state_of(api.client.app).fleet.switches == 1  # type: ignore[union-attr]
        with api.store.connect() as conn:
            logged = conn.execute(select(decisions.c.policy_version)
                                  .where(decisions.c.request_id == body["request_id"])).scalar()
        assert logged == "acme@2.0.0"
        # from now on decided early under the new pack, without switching again
        assert api.check(request()).json()["policy_version"] == "acme@2.0.0"
        assert state_of(api.client.app).fleet.switches == 1  # type: ignore[union-attr]
        ready = api.client.get("/readyz").json()
        assert ready["policy_version"] == "acme@2.0.0"
        assert ready["fleet"]["active"]["generation"] == 1


def test_an_active_pack_that_does_not_load_fails_closed_until_one_that_does(
        db_url: str) -> None:
    with fleet_app(db_url) as api:
        assert api.check(request()).status_code == 200
        # what a newer Stage0 might push: a setting this one does not know
        policies.store_unchecked(api.store, pack_text("3.0.0") + "\nfuture_setting: 1\n",
                                 policy_version="acme@3.0.0", pushed_by="t", now_us=1)
        for _ in range(2):
            answer = api.check(request())
            assert answer.status_code == 503
            body = answer.json()
            assert body["verdict"] == "DENY"
            assert body["decision"] == "ERROR"
            assert "acme@3.0.0 (generation 1) does not load on this replica" in body["detail"]
            assert body["policy_version"] == "acme@3.0.0"  # what should have decided
        fleet = state_of(api.client.app).fleet
        assert fleet is not None
        fleet.tick()
        ready = api.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["fleet"]["state"] == "failed"
        assert any("does not load on this replica" in p for p in ready.json()["problems"])
        policies.push(api.store, pack_text("3.0.1"), pushed_by="t", now_us=2)
        answer = api.check(request())
        assert answer.status_code == 200
        assert answer.json()["policy_version"] == "acme@3.0.1"
        fleet.tick()
        assert api.client.get("/readyz").status_code == 200


def test_the_store_policy_wins_over_the_policy_file_and_readyz_metrics_show_it(
        db_url: str, tmp_path: Path) -> None:
    file_pack = write_pack(tmp_path, "5.0.0", name="from-file")
    with fleet_app(db_url, policy=str(file_pack)) as api:
        state = state_of(api.client.app)
        assert api.check(request()).json()["policy_version"] == "from-file@5.0.0"
        assert state.fleet is not None
        state.fleet.tick()
        ready = api.client.get("/readyz").json()
        assert ready["fleet"]["state"] == "file"
        assert ready["fleet"]["active"] is None
        [me] = ready["fleet"]["replicas"]
        assert me["state"] == "file"
        assert me["generation"] is None

        policies.push(api.store, pack_text("1.0.0"), pushed_by="t", now_us=1)
        state.fleet.tick()  # the poller: loads the new pack ahead of the next batch
        assert api.check(request()).json()["policy_version"] == "acme@1.0.0"
        assert state.fleet.switches == 0  # the poller had switched already
        assert state.reloader is not None
        assert state.reloader.reload() is False  # the file is not served while the store's is
        assert "wins over the pack file" in state.reloader.status["ignored"]
        assert api.check(request()).json()["policy_version"] == "acme@1.0.0"

        state.fleet.tick()
        ready = api.client.get("/readyz").json()
        assert ready["status"] == "ready"
        assert ready["fleet"]["state"] == "serving"
        assert ready["fleet"]["generation"] == 1
        assert ready["fleet"]["drifting"] == []
        [me] = ready["fleet"]["replicas"]
        assert (me["policy_version"], me["generation"], me["state"]) == ("acme@1.0.0", 1,
                                                                         "serving")
        samples = {s.name: s.value for f in text_string_to_metric_families(
            api.client.get("/metrics").text) for s in f.samples}
        assert samples["stage0_policy_generation"] == 1
        assert samples["stage0_policy_active_generation"] == 1
        assert samples["stage0_policy_drift"] == 0

        console = Console(TestClient(api.client.app, base_url="http://testserver"))
        assert console.sign_in(api.key).status_code == 303
        page = console.client.get("/console/policy").text
        for shown in ("Distribution", "acme@1.0.0</strong> is active (generation 1",
                      state.fleet.replica_id, "(this one)", "serving"):
            assert shown in page, shown

        _code, out = run("policy", "status", "--db", db_url, "--format", "json")
        status = orjson.loads(out)
        assert [r["replica_id"] for r in status["replicas"]] == [state.fleet.replica_id]
        assert status["drifting"] == []

    # a replica that starts while a pack is active serves it, whatever --policy says
    with fleet_app(db_url, policy=str(file_pack)) as api:
        assert api.check(request()).json()["policy_version"] == "acme@1.0.0"


def test_an_activation_waits_for_a_batch_that_read_the_active_pack(store: Store) -> None:
    """The lock protocol itself: a decision batch that read the active pack (under the shared
    policy lock on PostgreSQL, the write lock on SQLite) commits before an activation can."""
    policies.push(store, pack_text("1.0.0"), pushed_by="t", now_us=1)
    conn = store.engine.raw_connection()
    try:
        if store.dialect == "sqlite":
            begin = conn.cursor()
            begin.execute("BEGIN IMMEDIATE")  # what the writer's batch does
            begin.close()
        found = policies.fetch_active(policies.send_active_read(conn, store.dialect))
        assert found is not None
        assert found[0] == 1
        pushed = threading.Event()

        def push() -> None:
            policies.push(store, pack_text("1.1.0"), pushed_by="t", now_us=2)
            pushed.set()

        thread = threading.Thread(target=push)
        thread.start()
        assert not pushed.wait(0.5)  # the batch has not committed: the activation waits
        conn.commit()
        assert pushed.wait(10)
        thread.join()
    finally:
        conn.close()
    active = policies.active_policy(store)
    assert active is not None
    assert active.policy_version == "acme@1.1.0"


def test_a_stored_pack_edited_after_its_push_does_not_load(db_url: str) -> None:
    """The content hash recorded at the push is checked by every replica that loads the pack:
    a row changed in the database afterwards fails closed rather than decide."""
    with fleet_app(db_url) as api:
        pushed = policies.push(api.store, pack_text("1.0.0"), pushed_by="t", now_us=1)
        with api.store.begin() as conn:
            conn.execute(policy_versions.update().values(
                pack_text=pack_text("1.0.0", extra="Edited in the database.")))
        answer = api.check(request())
        assert answer.status_code == 503
        assert f"not the pushed {pushed.version.sha256[:12]}" in answer.json()["detail"]


def test_readyz_is_not_ready_while_this_replica_drifts_beyond_the_grace(db_url: str) -> None:
    with fleet_app(db_url, drift_grace_s=0.2) as api:
        fleet = state_of(api.client.app).fleet
        assert fleet is not None
        policies.push(api.store, pack_text("1.0.0"), pushed_by="t", now_us=1)
        fleet._refresh()  # it has read the pointer, but not yet served the pack
        ready = api.client.get("/readyz")
        assert ready.status_code == 200  # within the grace
        assert ready.json()["fleet"]["state"] == "drifting"
        time.sleep(0.3)
        ready = api.client.get("/readyz")
        assert ready.status_code == 503
        [problem] = ready.json()["problems"]
        assert problem.startswith("this replica serves stage0-policy-pack@1.0.0, not the "
                                  "active acme@1.0.0 (generation 1)")
        assert api.check(request()).json()["policy_version"] == "acme@1.0.0"  # never stale
        assert api.client.get("/readyz").status_code == 200
