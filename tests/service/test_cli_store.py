"""`stage0 keys` and `stage0 audit` against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import orjson
import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from stage0.cli.main import cli
from stage0.store import Store
from tests.helpers import request
from tests.service.conftest import running_app


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def store_url(store: Store, db_url: str) -> str:
    """The URL of a store that exists (as `stage0 migrate` or `stage0 serve` leave it)."""
    return db_url


def test_keys_create_list_revoke(store_url: str) -> None:
    status, out, _ = run("keys", "create", "--db", store_url, "--tenant", "acme", "--name", "agent",
                         "--scopes", "check", "--plan", "free", "--per-minute", "10",
                         "--principal", "bot", "--roles", "runner", "--format", "json")
    assert status == 0, out
    created = orjson.loads(out)
    assert created["key"].startswith("s0_")
    assert (created["tenant"], created["plan"], created["per_minute"]) == ("acme", "free", 10)
    assert created["monthly_quota"] == 10_000  # the free plan's default
    status, out, _ = run("keys", "list", "--db", store_url, "--format", "json")
    listed = orjson.loads(out)
    assert [k["id"] for k in listed] == [created["id"]]
    assert created["key"] not in out
    status, out, _ = run("keys", "revoke", "--db", store_url, created["id"])
    assert status == 0
    assert "revoked" in out
    status, out, _ = run("keys", "list", "--db", store_url, "--tenant", "acme")
    assert "revoked" in out


def test_db_comes_from_the_environment(store_url: str) -> None:
    status, _, _ = run("keys", "create", "--tenant", "t", "--name", "n",
                       env={"STAGE0_DATABASE_URL": store_url})
    assert status == 0
    status, out, _ = run("keys", "list", env={"STAGE0_DATABASE_URL": store_url})
    assert "t " in out or " t " in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scopes", "check,root"], "unknown scope"),
        (["--per-minute", "-1"], "must not be negative"),
        (["--plan", "gold"], "gold"),
    ],
)
def test_keys_create_rejects_bad_options(store_url: str, args: list[str], message: str) -> None:
    status, out, err = run("keys", "create", "--db", store_url, "--tenant", "t", "--name", "n",
                           *args)
    assert status == 2
    assert message in out + err


def test_revoking_an_unknown_key(store_url: str) -> None:
    status, out, err = run("keys", "revoke", "--db", store_url, "key_nope")
    assert status == 2
    assert "no key" in out + err


def test_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    status, out, err = run("keys", "list", "--db",
                           "postgresql://nobody@127.0.0.1:1/none")
    assert status == 1
    assert "cannot open the store" in out + err


def test_audit_verify_and_export(db_url: str, tmp_path: Path) -> None:
    with running_app(db_url) as api:
        rids = [api.check(request(goal=f"Summarize ticket batch {i} for the team")).json()[
            "request_id"] for i in range(3)]
        api.check({"goal": ""})  # a 422 is logged too
    status, out, _ = run("audit", "verify", "--db", db_url)
    assert status == 0, out
    assert "default: 4 rows ok" in out
    target = tmp_path / "export.jsonl"
    status, _, _ = run("audit", "export", "--db", db_url, "--format", "jsonl", "-o", str(target))
    assert status == 0
    records = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    assert [r["request_id"] for r in records][:3] == rids
    assert records[3]["http_status"] == 422
    status, out, _ = run("audit", "export", "--db", db_url, "--until", "2000-01-01T00:00:00Z")
    assert out == ""
    store = Store(db_url)
    with store.begin() as conn:
        conn.execute(text("UPDATE decisions SET response = '{}' WHERE request_id = :r"),
                     {"r": rids[0]})
    store.dispose()
    status, out, _ = run("audit", "verify", "--db", db_url, "--tenant", "default")
    assert status == 1
    assert "BROKEN" in out
    assert "seq 1" in out


STORE_COMMANDS = [
    ["audit", "verify"], ["audit", "export"], ["audit", "break-glass"], ["keys", "list"],
    ["keys", "create", "--tenant", "t", "--name", "n"], ["keys", "revoke", "key_x"],
    ["keys", "rotate-signing"], ["approvals", "list"], ["approvals", "show", "apr_x"],
    ["webhooks", "list"], ["policy", "shadow-report"],
]


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=" ".join)
def test_store_commands_refuse_a_missing_sqlite_store_and_create_nothing(
        command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "stage0.db"
    missing.parent.mkdir()
    status, out, err = run(*command, "--db", f"sqlite:///{missing}")
    assert status == 1, out + err
    assert f"no Stage0 store at sqlite:///{missing}" in err
    assert "stage0 migrate" in err
    assert list(missing.parent.iterdir()) == []  # no empty store left behind


def test_the_default_store_is_named_with_its_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    status, _, err = run("audit", "verify", env={"STAGE0_DATABASE_URL": ""})
    assert status == 1
    assert f"no Stage0 store at sqlite:///./stage0.db ({tmp_path / 'stage0.db'})" in err
    assert not (tmp_path / "stage0.db").exists()


def test_store_commands_refuse_a_database_without_a_store(db_url: str) -> None:
    """An empty database (PostgreSQL: created but never migrated) is no store either."""
    status, _, err = run("audit", "verify", "--db", db_url)
    assert status == 1
    assert "no Stage0 store" in err
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url) as conn:
            tables = conn.execute("SELECT count(*) FROM information_schema.tables "
                                  "WHERE table_schema = 'public'").fetchone()
        assert tables == (0,)


def test_migrate_creates_the_store_then_finds_it_up_to_date(db_url: str) -> None:
    status, out, err = run("migrate", "--db", db_url)
    assert status == 0, out + err
    assert out.startswith("created ")
    status, out, _ = run("migrate", "--db", db_url)
    assert status == 0
    assert out.startswith("up to date: ")
    status, out, _ = run("audit", "verify", "--db", db_url)
    assert (status, out.strip()) == (0, "no decisions logged yet")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_a_busy_port_fails_first_with_one_error(workers: int, tmp_path: Path) -> None:
    """Before a store is created or an admin key printed, and alike for one worker or two."""
    db = tmp_path / "stage0.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "stage0", "serve", "--port", str(port), "--workers",
             str(workers), "--db", f"sqlite:///{db}"],
            capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use (is another server "
        "running there? choose another --port)")
    assert not db.exists()
    assert "s0_" not in done.stdout + done.stderr
