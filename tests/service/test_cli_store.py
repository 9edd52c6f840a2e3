"""`stage0 keys` and `stage0 audit` against a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import orjson
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


def test_keys_create_list_revoke(db_url: str) -> None:
    status, out, _ = run("keys", "create", "--db", db_url, "--tenant", "acme", "--name", "agent",
                         "--scopes", "check", "--plan", "free", "--per-minute", "10",
                         "--principal", "bot", "--roles", "runner", "--format", "json")
    assert status == 0, out
    created = orjson.loads(out)
    assert created["key"].startswith("s0_")
    assert (created["tenant"], created["plan"], created["per_minute"]) == ("acme", "free", 10)
    assert created["monthly_quota"] == 10_000  # the free plan's default
    status, out, _ = run("keys", "list", "--db", db_url, "--format", "json")
    listed = orjson.loads(out)
    assert [k["id"] for k in listed] == [created["id"]]
    assert created["key"] not in out
    status, out, _ = run("keys", "revoke", "--db", db_url, created["id"])
    assert status == 0
    assert "revoked" in out
    status, out, _ = run("keys", "list", "--db", db_url, "--tenant", "acme")
    assert "revoked" in out


def test_db_comes_from_the_environment(db_url: str) -> None:
    status, _, _ = run("keys", "create", "--tenant", "t", "--name", "n",
                       env={"STAGE0_DATABASE_URL": db_url})
    assert status == 0
    status, out, _ = run("keys", "list", env={"STAGE0_DATABASE_URL": db_url})
    assert "t " in out or " t " in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scopes", "check,root"], "unknown scope"),
        (["--per-minute", "-1"], "must not be negative"),
        (["--plan", "gold"], "gold"),
    ],
)
def test_keys_create_rejects_bad_options(db_url: str, args: list[str], message: str) -> None:
    status, out, err = run("keys", "create", "--db", db_url, "--tenant", "t", "--name", "n", *args)
    assert status == 2
    assert message in out + err


def test_revoking_an_unknown_key(db_url: str) -> None:
    status, out, err = run("keys", "revoke", "--db", db_url, "key_nope")
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
