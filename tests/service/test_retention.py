"""Retention (#16 item 4): the decision log pruned by whole months — partitions on PostgreSQL,
rows on SQLite — after a checkpoint signed at each tenant's boundary, so that `stage0 audit
verify` still verifies what is left from that signed boundary; a deletion that is not a signed
prune is still reported."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from stage0.cli.main import cli
from stage0.store import Store, checkpoints, ledger, retention
from stage0.store.signing import Keyring, ensure_signing_key


def us(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1e6)


def log_at(store: Store, tenant: str, days: list[str]) -> None:
    with store.raw() as conn:
        cursor = conn.cursor()
        chain = ledger.read_head(store, cursor, tenant)
        for day in days:
            seq = chain.seq + 1
            record: ledger.LogRecord = {
                "tenant_id": tenant, "request_id": f"req-{tenant}-{seq}", "key_id": "key_x",
                "kind": "decision", "http_status": 200, "verdict": "ALLOW", "decision": "GO",
                "policy_version": "pack@1", "policy_sha256": "0" * 64,
                "input_sha256": "1" * 64, "action_digest": "2" * 64, "environment": None,
                "tools": "[]", "buckets": "[]", "request": "{}", "redacted_paths": "[]",
                "response": "{}", "frozen_time": None, "timings": "{}",
                "created_us": us(day) + seq,
            }
            ledger.append(chain, record)
        ledger.save(store, cursor, tenant, chain)
        conn.commit()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout + result.stderr


def seqs(store: Store, tenant: str) -> list[int]:
    with store.connect() as conn:
        return [r[0] for r in conn.execute(text(
            "SELECT seq FROM decisions WHERE tenant_id = :t ORDER BY seq"), {"t": tenant})]


@pytest.fixture
def url(store: Store, db_url: str) -> str:
    """January to March 2026: ``acme`` 3 + 3 + 2 rows — its 6th row decided in February but
    chained after a March row, as two processes can at a month's edge — and ``initech`` only in
    January; with a witness checkpoint from before the prune."""
    ensure_signing_key(store)
    retention.ensure_partitions(store, us("2026-03-15"), ahead=1, since_us=us("2026-01-01"))
    log_at(store, "acme", ["2026-01-05", "2026-01-20", "2026-01-31", "2026-02-03",
                           "2026-03-01", "2026-02-28", "2026-03-02", "2026-03-03"])
    log_at(store, "initech", ["2026-01-02", "2026-01-03"])
    return db_url


def test_prune_drops_whole_months_after_signing_their_boundaries(
        store: Store, url: str, tmp_path: Path) -> None:
    witness = tmp_path / "witness.jsonl"
    status, out = run("audit", "checkpoint", "--db", url, "--witness", str(witness))
    assert status == 0, out
    if store.dialect == "postgresql":
        names = [p.name for p in retention.partitions(store)]
        assert names[:3] == ["decisions_p202601", "decisions_p202602", "decisions_p202603"]

    status, out = run("audit", "prune", "--db", url, "--before", "2026-03-01", "--dry-run")
    assert status == 0, out
    assert "would remove" in out
    assert "acme: seq 1..4" in out
    assert "initech: seq 1..2" in out
    assert seqs(store, "acme") == [1, 2, 3, 4, 5, 6, 7, 8]

    status, out = run("audit", "prune", "--db", url, "--before", "2026-03-01")
    assert status == 0, out
    assert "removed" in out
    assert "1 rows of those months chained after kept rows were kept" in out
    if store.dialect == "postgresql":
        assert "decisions_p202601, decisions_p202602" in out
        names = [p.name for p in retention.partitions(store)]
        assert "decisions_p202601" not in names
        assert "decisions_p202602" not in names
        assert "decisions_p202603" in names
    assert seqs(store, "acme") == [5, 6, 7, 8]  # seq 6 (February) is above the boundary
    assert seqs(store, "initech") == []
    boundary = {(c.tenant, c.seq): c for c in checkpoints.stored(store)
                if c.reason == "partition"}
    assert set(boundary) == {("acme", 4), ("initech", 2)}

    status, out = run("audit", "verify", "--db", url, "--witness", str(witness))
    assert status == 0, out
    assert "acme: 4 rows ok" in out
    assert "seq 1..4 pruned at a signed partition boundary" in out
    assert "initech: 0 rows ok" in out
    assert "seq 1..2 pruned" in out

    # pruning again changes nothing; appending goes on from the head
    status, out = run("audit", "prune", "--db", url, "--before", "2026-03-01")
    assert status == 0, out
    log_at(store, "initech", ["2026-03-10"])
    assert run("audit", "verify", "--db", url)[0] == 0


def test_deleting_rows_without_a_signed_boundary_is_still_reported(store: Store,
                                                                   url: str) -> None:
    with store.begin() as conn:
        conn.execute(text("DELETE FROM decisions WHERE tenant_id = 'acme' AND seq <= 4"))
    status, out = run("audit", "verify", "--db", url)
    assert status == 1
    assert "seq 1..4 missing" in out


def test_a_periodic_checkpoint_is_not_a_retention_boundary(store: Store, url: str) -> None:
    """Only a checkpoint whose signed claims say `reason: partition` lets verify start after
    it; relabelling a stored one does not."""
    made = checkpoints.sign_checkpoint(store, Keyring(store), "acme", 4, reason="manual")
    claims = orjson.loads(__import__("base64").urlsafe_b64decode(
        made.jws.split(".")[1] + "=="))
    assert "reason" not in claims
    with store.begin() as conn:
        conn.execute(text("UPDATE chain_checkpoints SET reason = 'partition'"))
        conn.execute(text("DELETE FROM decisions WHERE tenant_id = 'acme' AND seq <= 4"))
    status, out = run("audit", "verify", "--db", url, "--tenant", "acme")
    assert status == 1
    assert "missing" in out


def test_a_row_removed_after_the_boundary_is_reported(store: Store, url: str) -> None:
    assert run("audit", "prune", "--db", url, "--before", "2026-03-01")[0] == 0
    with store.begin() as conn:
        conn.execute(text("DELETE FROM decisions WHERE tenant_id = 'acme' AND seq = 5"))
    status, out = run("audit", "verify", "--db", url, "--tenant", "acme")
    assert status == 1
    assert "seq 1..5 missing" in out or "seq 5" in out


def test_partitions_are_created_ahead_on_postgresql(store: Store) -> None:
    if store.dialect != "postgresql":
        assert retention.ensure_partitions(store) == []
        return
    made = retention.ensure_partitions(store, us("2031-05-10"), ahead=2)
    assert made == ["decisions_p203105", "decisions_p203106", "decisions_p203107"]
    assert retention.ensure_partitions(store, us("2031-05-10"), ahead=2) == []
    log_at(store, "acme", ["2031-06-01"])
    with store.connect() as conn:
        where = conn.execute(text("SELECT tableoid::regclass::text FROM decisions")).scalar()
    assert where == "decisions_p203106"


def test_prune_waits_for_the_export_sinks(store: Store, url: str) -> None:
    from stage0.store import export  # noqa: PLC0415

    export.replay(store, "siem", "acme", 3)  # the sink has acknowledged seq 1..2 of acme
    status, out = run("audit", "prune", "--db", url, "--before", "2026-03-01")
    assert status == 1
    assert "not exported yet: siem is at seq 2 of acme (boundary 4)" in out
    assert seqs(store, "acme") == [1, 2, 3, 4, 5, 6, 7, 8]
    status, out = run("audit", "prune", "--db", url, "--before", "2026-03-01",
                      "--ignore-export")
    assert status == 0, out
    assert seqs(store, "acme") == [5, 6, 7, 8]


def test_migration_0012_partitions_a_log_that_has_rows_and_back(db_url: str) -> None:
    """Upgrading a store with rows to 0012 keeps every row and the chain (on PostgreSQL the
    rows move into monthly partitions); downgrading puts them back in one table."""
    from importlib import resources  # noqa: PLC0415

    from alembic import command  # noqa: PLC0415
    from alembic.config import Config  # noqa: PLC0415

    store = Store(db_url)
    config = Config()
    config.set_main_option("script_location",
                           str(resources.files("stage0.store").joinpath("migrations")))

    def migrate(to: str, up: bool = True) -> None:
        with store.engine.begin() as conn:
            config.attributes["connection"] = conn
            (command.upgrade if up else command.downgrade)(config, to)

    try:
        migrate("0011")
        log_at(store, "acme", ["2026-01-05", "2026-02-03", "2026-02-04"])
        migrate("0012")
        assert seqs(store, "acme") == [1, 2, 3]
        assert all(r.ok for r in ledger.verify(store))
        if store.dialect == "postgresql":
            with store.connect() as conn:
                where = [r[0] for r in conn.execute(text(
                    "SELECT tableoid::regclass::text FROM decisions ORDER BY seq"))]
            assert where == ["decisions_p202601", "decisions_p202602", "decisions_p202602"]
            assert retention.partitioned(store)
        log_at(store, "acme", ["2026-12-03"])
        migrate("0011", up=False)
        assert seqs(store, "acme") == [1, 2, 3, 4]
        assert not retention.partitioned(store)
        assert all(r.ok for r in ledger.verify(store))
        log_at(store, "acme", ["2026-12-04"])  # the id sequence still numbers new rows
        migrate("heads")
        assert seqs(store, "acme") == [1, 2, 3, 4, 5]
    finally:
        store.dispose()


def test_rows_logged_into_the_pruned_months_meanwhile_stop_the_prune(store: Store,
                                                                     url: str) -> None:
    """Rows of the months to prune appended after the prune read the heads (a server with
    --frozen-time there) make it remove nothing, rather than drop them."""
    with store.connect() as conn:
        heads = {r.tenant_id: int(r.seq) for r in conn.execute(text(
            "SELECT tenant_id, seq FROM chain_heads"))}
    log_at(store, "acme", ["2026-02-10"])
    cut = retention.decisions.c.created_us < us("2026-03-01")
    with store.begin() as conn, pytest.raises(retention.LogChanged, match="run it again"):
        retention._guard(conn, heads, cut)
    log_at(store, "initech", ["2026-03-05"])  # rows of kept months are no obstacle
    heads["acme"] += 1
    with store.begin() as conn:
        retention._guard(conn, heads, cut)
