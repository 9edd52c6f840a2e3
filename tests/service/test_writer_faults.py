"""The decision writer under faults: it never dies, callers never wait forever, and the
migrations bring an early database up to date."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from stage0.server.state import state_of
from stage0.server.writer import Writer
from stage0.store import Store
from tests.helpers import request
from tests.service.conftest import Api, running_app


def test_a_lock_failure_fails_its_batch_closed_and_the_writer_goes_on(api: Api) -> None:
    writer = _pipeline(api)
    real = writer.lock
    calls = {"n": 0}

    @contextmanager
    def flaky() -> Iterator[None]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(37, "No locks available")
        with real():
            yield

    writer.lock = flaky
    try:
        failed = api.check(request())
        assert failed.status_code == 503
        assert failed.json()["verdict"] == "DENY"
        assert failed.headers["x-request-id"] == failed.json()["request_id"]
        assert api.check(request()).json()["verdict"] == "ALLOW"  # the writer lived on
    finally:
        writer.lock = real


def test_a_stuck_writer_answers_a_fail_closed_503_in_time(api: Api) -> None:
    writer = _pipeline(api)
    writer.decision_timeout_s = 0.3
    real = writer.lock
    release = threading.Event()

    @contextmanager
    def stuck() -> Iterator[None]:
        release.wait(10)
        with real():
            yield

    writer.lock = stuck
    try:
        started = time.monotonic()
        answer = api.check(request())
        assert time.monotonic() - started < 5
        assert answer.status_code == 503
        assert answer.json()["verdict"] == "DENY"
        assert "No decision within 0.3 s" in answer.json()["detail"]
        assert answer.headers["retry-after"] == "1"
    finally:
        release.set()
        writer.lock = real
    assert api.check(request()).json()["verdict"] == "ALLOW"


def test_no_lock_file_means_sqlite_locking_alone(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store._lock_path = str(tmp_path / "missing" / "dir" / "s.db-writer.lock")
    with store.writer_lock():
        pass
    assert "no writer lock file" in caplog.text
    store.dispose()


def test_migration_0007_recounts_pending_approvals_and_adds_lifts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'early.db'}"
    store = Store(url)
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("stage0.store").joinpath("migrations")))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0006")
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO approvals (id, tenant_id, status, action_digest, action, buckets, "
            "request_id, requested_by_key, policy_version, required_approvals, "
            "approvals_count, eligible_roles, requires_mfa, execute_within_s, created_us, "
            "expires_us) VALUES ('apr_1', 'default', 'pending', 'd', '{}', '[]', 'r', 'k', "
            "'p@1.0.0', 2, 0, '[]', 0, 900, 1, 9000000000000000)"))
        conn.execute(text(
            "INSERT INTO approval_votes (approval_id, tenant_id, key_id, principal, decision, "
            "reason, mfa, created_us) VALUES ('apr_1', 'default', 'k2', 'alice', 'approve', "
            "'ok', 0, 2)"))
    store.migrate()
    with store.engine.connect() as conn:
        assert conn.execute(text(
            "SELECT approvals_count FROM approvals WHERE id = 'apr_1'")).scalar() == 1
        assert conn.execute(text("SELECT lifts FROM approvals")).fetchall() == [(None,)]
    store.dispose()


def _pipeline(api: Api) -> Writer:
    pipeline: Writer = state_of(api.client.app).pipeline
    return pipeline


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with running_app(db_url) as a:
        yield a


def test_sqlite_checkpoints_in_the_background_after_commits_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = Store.checkpoint

    def counted(self: Store) -> None:
        calls.append(time.monotonic())
        real(self)

    monkeypatch.setattr(Store, "checkpoint", counted)
    with running_app(f"sqlite:///{tmp_path / 'stage0.db'}") as api:
        _pipeline(api).durability.checkpoint_interval_s = 0.02
        time.sleep(0.2)
        assert calls == []  # nothing committed, nothing to copy
        for _ in range(5):
            assert api.check(request()).status_code == 200
        time.sleep(0.3)  # some 15 intervals: the commits are all seen
        assert calls, "no checkpoint after the commits"
        wal = tmp_path / "stage0.db-wal"
        with Store(f"sqlite:///{tmp_path / 'stage0.db'}").engine.connect() as conn:
            busy, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        assert busy == 0
        assert frames == copied  # the log is all in the database file already
        assert wal.exists()
        settled = len(calls)
        time.sleep(0.2)
        assert len(calls) == settled  # idle: no more checkpoints


def test_migration_0008_compresses_the_log_with_lz4_on_postgresql(store: Store) -> None:
    with store.engine.connect() as conn:
        if store.dialect == "sqlite":  # no such setting: the migration does nothing there
            assert conn.execute(text("SELECT count(*) FROM decisions")).scalar() == 0
            return
        lz4 = conn.execute(text(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND 'lz4' = ANY(enumvals)")).first() is not None
        found = dict(conn.execute(text(
            "SELECT attname, attcompression FROM pg_attribute WHERE attrelid = "
            "'decisions'::regclass AND attname IN ('request', 'response')")).all())
    assert found == ({"request": "l", "response": "l"} if lz4 else {"request": "", "response": ""})


def test_sqlite_batches_are_synced_after_the_lock_and_before_any_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = Store.sync_wal

    def counted(self: Store) -> None:
        real(self)
        synced.append(1)

    monkeypatch.setattr(Store, "sync_wal", counted)
    with running_app(f"sqlite:///{tmp_path / 'stage0.db'}") as api:
        pipeline = _pipeline(api)
        for _ in range(5):
            assert api.check(request()).status_code == 200
        assert len(synced) >= pipeline.stats.committed >= 5  # every committed batch, a sweep too
        writer = pipeline.connection().cursor()
        assert writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: synced by us
        writer.close()
        with api.store.engine.connect() as conn:  # every other connection: FULL
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def test_a_failed_sync_fails_closed_for_good_and_readyz_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Store) -> None:
        raise OSError(5, "Input/output error")

    with running_app(f"sqlite:///{tmp_path / 'stage0.db'}") as api:
        assert api.check(request()).status_code == 200
        monkeypatch.setattr(Store, "sync_wal", broken)
        failed = api.check(request())
        assert failed.status_code == 503
        assert failed.json()["verdict"] == "DENY"
        assert failed.json()["decision"] == "ERROR"
        monkeypatch.undo()  # the disk "works" again: what reached it is still unknown
        again = api.check(request())
        assert again.status_code == 503
        assert again.json()["verdict"] == "DENY"
        ready = api.client.get("/readyz")
        assert ready.status_code == 503
        assert any("could not be flushed to disk" in p for p in ready.json()["problems"])


def test_a_missing_wal_is_a_failed_sync(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'stage0.db'}")
    try:
        store.migrate()
        store.engine.dispose()  # the last connection closes: SQLite checkpoints, removes the WAL
        with pytest.raises(FileNotFoundError):
            store.sync_wal()  # no connection holds the database: no WAL file to flush
    finally:
        store.dispose()
