"""Signed chain checkpoints (issue #17 item 7): tail truncation and rehash-from-a-row rewrites,
which keep the chain self-consistent, are caught by `stage0 audit verify` against checkpoints
signed with the server's key — stored ones and those kept in a witness file outside the
database. On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from joserfc import jwt
from joserfc.jwk import OKPKey
from sqlalchemy import text

from stage0.cli.main import cli
from stage0.store import Store, ledger
from stage0.store.signing import ensure_signing_key

TENANT = "acme"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout + result.stderr


def log_rows(store: Store, n: int, tenant: str = TENANT) -> None:
    """Append ``n`` rows to ``tenant``'s chain, as the decision writer does."""
    with store.raw() as conn:
        cursor = conn.cursor()
        chain = ledger.read_head(store, cursor, tenant)
        for _ in range(n):
            seq = chain.seq + 1
            record: ledger.LogRecord = {
                "tenant_id": tenant, "request_id": f"req-{tenant}-{seq}", "key_id": "key_x",
                "kind": "decision", "http_status": 200, "verdict": "ALLOW", "decision": "GO",
                "policy_version": "pack@1", "policy_sha256": "0" * 64,
                "input_sha256": "1" * 64, "action_digest": "2" * 64, "environment": None,
                "tools": '["ticket_search"]', "buckets": "[]", "request": '{"goal":"g"}',
                "redacted_paths": "[]", "response": '{"verdict":"ALLOW"}',
                "frozen_time": None, "timings": "{}", "created_us": 1_700_000_000_000_000 + seq,
            }
            ledger.append(chain, record)
        ledger.save(store, cursor, tenant, chain)
        conn.commit()


@pytest.fixture
def url(store: Store, db_url: str) -> str:
    """A store with a signing key (as `stage0 serve` leaves it) and 6 rows for ``acme``."""
    ensure_signing_key(store)
    log_rows(store, 6)
    return db_url


def checkpoint(url: str, witness: Path) -> list[dict[str, Any]]:
    status, out = run("audit", "checkpoint", "--db", url, "--witness", str(witness))
    assert status == 0, out
    return [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]


def verify(url: str, *extra: str) -> tuple[int, str]:
    return run("audit", "verify", "--db", url, *extra)


def rows(store: Store, tenant: str = TENANT) -> list[dict[str, Any]]:
    with store.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(
            "SELECT * FROM decisions WHERE tenant_id = :t ORDER BY seq"), {"t": tenant})]


def truncate(store: Store, keep: int, tenant: str = TENANT) -> None:
    """Delete every row after ``keep`` and rewind the head to it: the chain stays intact."""
    last = rows(store, tenant)[keep - 1]
    with store.begin() as conn:
        conn.execute(text("DELETE FROM decisions WHERE tenant_id = :t AND seq > :k"),
                     {"t": tenant, "k": keep})
        conn.execute(text("UPDATE chain_heads SET seq = :s, row_hash = :h WHERE tenant_id = :t"),
                     {"t": tenant, "s": keep, "h": last["row_hash"]})


def rehash_from(store: Store, k: int, tenant: str = TENANT) -> None:
    """Change row ``k`` and recompute every hash from it on, and the head: the chain stays
    intact."""
    chain = rows(store, tenant)
    prev = chain[k - 2]["row_hash"] if k > 1 else ledger.GENESIS
    with store.begin() as conn:
        for record in chain[k - 1:]:
            if record["seq"] == k:
                record["verdict"], record["decision"] = "DENY", "NO_GO"
            record["prev_hash"] = prev
            record["row_hash"] = prev = ledger.row_hash(record)
            conn.execute(text("UPDATE decisions SET verdict = :v, decision = :d, "
                              "prev_hash = :p, row_hash = :h WHERE id = :id"),
                         {"v": record["verdict"], "d": record["decision"],
                          "p": record["prev_hash"], "h": record["row_hash"],
                          "id": record["id"]})
        conn.execute(text("UPDATE chain_heads SET seq = :s, row_hash = :h WHERE tenant_id = :t"),
                     {"t": tenant, "s": chain[-1]["seq"], "h": prev})


def drop_stored_checkpoints(store: Store) -> None:
    with store.begin() as conn:
        conn.execute(text("DELETE FROM chain_checkpoints"))


def test_an_untouched_chain_verifies_with_its_checkpoints(
        url: str, store: Store, tmp_path: Path) -> None:
    witness = tmp_path / "witness.jsonl"
    [made] = checkpoint(url, witness)
    assert (made["tenant"], made["seq"]) == (TENANT, 6)
    status, out = verify(url, "--witness", str(witness))
    assert status == 0, out
    assert f"{TENANT}: 6 rows ok" in out
    log_rows(store, 2)  # the chain grows past the anchor: still fine
    checkpoint(url, witness)
    assert len(witness.read_text().splitlines()) == 2
    status, out = verify(url, "--witness", str(witness))
    assert status == 0, out
    assert f"{TENANT}: 8 rows ok" in out


def test_truncating_the_tail_and_rewinding_the_head_is_caught(
        url: str, store: Store, tmp_path: Path) -> None:
    witness = tmp_path / "witness.jsonl"
    checkpoint(url, witness)
    truncate(store, keep=4)
    drop_stored_checkpoints(store)  # someone with write access removes those too
    assert all(r.ok for r in ledger.verify(store))  # the chain alone cannot tell
    status, out = verify(url, "--witness", str(witness))
    assert status == 1, out
    assert "BROKEN" in out
    assert "seq 5..6" in out, out
    assert "truncated" in out, out
    assert "head" in out, out
    assert "seq 4" in out, out


def test_truncation_is_caught_by_the_stored_checkpoints_alone(
        url: str, store: Store, tmp_path: Path) -> None:
    checkpoint(url, tmp_path / "w.jsonl")
    truncate(store, keep=3)
    status, out = verify(url)
    assert status == 1, out
    assert "seq 4..6" in out, out
    assert "truncated" in out, out


def test_rehashing_from_a_row_onwards_is_caught(url: str, store: Store, tmp_path: Path) -> None:
    witness = tmp_path / "witness.jsonl"
    truncate(store, keep=3)  # anchor at seq 3, then at seq 6
    checkpoint(url, witness)
    log_rows(store, 3)
    checkpoint(url, witness)
    rehash_from(store, 5)
    assert all(r.ok for r in ledger.verify(store))  # the chain alone cannot tell
    status, out = verify(url, "--witness", str(witness))
    assert status == 1, out
    assert "seq 6" in out, out
    assert "rewritten" in out, out
    assert "from a row in seq 4..6" in out, out  # the anchor at seq 3 still matches
    # without the witness, the stored checkpoints catch it too (the rewriter lacks the key)
    status, out = verify(url)
    assert status == 1, out
    assert "seq 6" in out, out
    assert "rewritten" in out, out
    # and once they are gone as well, only the witness does
    drop_stored_checkpoints(store)
    assert verify(url)[0] == 0
    assert verify(url, "--witness", str(witness))[0] == 1


def test_rehashing_at_the_anchored_row_itself_is_caught(
        url: str, store: Store, tmp_path: Path) -> None:
    witness = tmp_path / "witness.jsonl"
    checkpoint(url, witness)
    rehash_from(store, 6)
    drop_stored_checkpoints(store)
    status, out = verify(url, "--witness", str(witness))
    assert status == 1, out
    assert "seq 6" in out, out
    assert "rewritten" in out, out


def _forge(claims: dict[str, Any], kid: str) -> str:
    """A checkpoint signed by a key that is not the server's, under the server key's id."""
    key = OKPKey.generate_key("Ed25519")
    return jwt.encode({"alg": "Ed25519", "kid": kid, "typ": "stage0-checkpoint+jwt"}, claims,
                      key, algorithms=["Ed25519"])


def test_a_forged_stored_checkpoint_is_caught(url: str, store: Store, tmp_path: Path) -> None:
    """A rewriter who re-signs the stored checkpoint to match the rewritten chain, without the
    server's key."""
    [made] = checkpoint(url, tmp_path / "w.jsonl")
    rehash_from(store, 2)
    new_hash = rows(store)[-1]["row_hash"]
    claims = _claims(made["jws"])
    claims["row_hash"] = new_hash
    with store.begin() as conn:
        conn.execute(text("UPDATE chain_checkpoints SET row_hash = :h, jws = :j "
                          "WHERE tenant_id = :t AND seq = 6"),
                     {"h": new_hash, "j": _forge(claims, made["kid"]), "t": TENANT})
    status, out = verify(url)
    assert status == 1, out
    assert "signature" in out, out
    assert "seq 6" in out, out


def _claims(token: str) -> dict[str, Any]:
    from joserfc import jws  # noqa: PLC0415

    payload = jws.extract_compact(token.encode()).payload
    claims: dict[str, Any] = orjson.loads(payload)
    return claims


def test_a_forged_witness_line_is_caught(url: str, store: Store, tmp_path: Path) -> None:
    witness = tmp_path / "witness.jsonl"
    [made] = checkpoint(url, witness)
    claims = _claims(made["jws"])
    claims["seq"], claims["row_hash"] = 3, rows(store)[2]["row_hash"]
    forged = {**made, "seq": 3, "row_hash": claims["row_hash"],
              "jws": _forge(claims, made["kid"])}
    with witness.open("ab") as f:
        f.write(orjson.dumps(forged) + b"\n")
    status, out = verify(url, "--witness", str(witness))
    assert status == 1, out
    assert "witness" in out, out
    assert "line 2" in out, out
    assert "signature" in out, out


def test_an_altered_witness_field_is_caught(url: str, tmp_path: Path) -> None:
    """The readable fields of a witness line must say what its signature says."""
    witness = tmp_path / "witness.jsonl"
    [made] = checkpoint(url, witness)
    witness.write_bytes(orjson.dumps({**made, "seq": 5}) + b"\n")
    status, out = verify(url, "--witness", str(witness))
    assert status == 1, out
    assert "line 1" in out, out


def test_a_tenant_deleted_entirely_is_caught_by_the_witness(
        url: str, store: Store, tmp_path: Path) -> None:
    log_rows(store, 2, tenant="other")
    witness = tmp_path / "witness.jsonl"
    made = checkpoint(url, witness)
    assert sorted(m["tenant"] for m in made) == [TENANT, "other"]
    with store.begin() as conn:
        for table in ("decisions", "chain_heads", "chain_checkpoints"):
            conn.execute(text(f"DELETE FROM {table} WHERE tenant_id = 'other'"))
    status, out = verify(url, "--witness", str(witness))
    assert status == 1, out
    assert "other: 0 rows BROKEN" in out, out
    assert "seq 1..2" in out, out


def test_the_witness_holds_signatures_an_outside_party_can_check(
        url: str, store: Store, tmp_path: Path) -> None:
    """Against the JWKS (the server's public keys), with no access to the database."""
    from joserfc.jwk import KeySet  # noqa: PLC0415

    from stage0.store.signing import Keyring  # noqa: PLC0415

    witness = tmp_path / "witness.jsonl"
    [made] = checkpoint(url, witness)
    jwks = Keyring(store).jwks(int(time.time() * 1e6))
    decoded = jwt.decode(made["jws"], KeySet.import_key_set(jwks), algorithms=["Ed25519"])
    assert decoded.header["typ"] == "stage0-checkpoint+jwt"
    assert decoded.claims["tenant"] == TENANT
    assert decoded.claims["seq"] == 6
    assert decoded.claims["row_hash"] == rows(store)[-1]["row_hash"]
    # verify also takes the public keys from outside the database
    keys = tmp_path / "jwks.json"
    keys.write_bytes(orjson.dumps(jwks))
    assert verify(url, "--witness", str(witness), "--jwks", str(keys))[0] == 0
    other = tmp_path / "other.json"
    other.write_bytes(orjson.dumps({"keys": [
        OKPKey.generate_key("Ed25519", parameters={"kid": made["kid"]}).as_dict(private=False)]}))
    status, out = verify(url, "--witness", str(witness), "--jwks", str(other))
    assert status == 1, out
    assert "signature" in out, out


def test_a_checkpoint_is_not_an_execution_token(url: str, store: Store, tmp_path: Path) -> None:
    from stage0.store.signing import Keyring, TokenError  # noqa: PLC0415

    [made] = checkpoint(url, tmp_path / "w.jsonl")
    with pytest.raises(TokenError):
        Keyring(store).verify(made["jws"], time.time())


def test_the_checkpoint_api_signs_at_a_given_seq(url: str, store: Store) -> None:
    """What retention (#16) reuses: a checkpoint at a chosen seq, not only at the head."""
    from stage0.store import checkpoints  # noqa: PLC0415
    from stage0.store.signing import Keyring  # noqa: PLC0415

    made = checkpoints.sign_checkpoint(store, Keyring(store), TENANT, 3, reason="partition")
    assert (made.tenant, made.seq, made.reason) == (TENANT, 3, "partition")
    assert made.row_hash == rows(store)[2]["row_hash"]
    again = checkpoints.sign_checkpoint(store, Keyring(store), TENANT, 3, reason="manual")
    assert again.jws == made.jws  # one checkpoint per seq
    with pytest.raises(LookupError):
        checkpoints.sign_checkpoint(store, Keyring(store), TENANT, 99)
    assert [c.seq for c in checkpoints.stored(store, TENANT)] == [3]


def test_the_periodic_job_checkpoints_every_n_rows_or_t_seconds(url: str, store: Store) -> None:
    from stage0.store import checkpoints  # noqa: PLC0415

    now = [1000.0]
    job = checkpoints.Checkpointer(
        store, checkpoints.CheckpointSettings(every_rows=4, interval_s=60.0),
        clock=lambda: now[0])
    job.run_once()  # never checkpointed: at once
    assert [c.seq for c in checkpoints.stored(store, TENANT)] == [6]
    log_rows(store, 3)
    job.run_once()  # 3 rows, 0 s later: not yet
    assert [c.seq for c in checkpoints.stored(store, TENANT)] == [6]
    log_rows(store, 1)
    job.run_once()  # the 4th row
    assert [c.seq for c in checkpoints.stored(store, TENANT)] == [6, 10]
    log_rows(store, 1)
    now[0] += 61
    job.run_once()  # 1 row, but a minute later
    assert [c.seq for c in checkpoints.stored(store, TENANT)] == [6, 10, 11]
    now[0] += 600
    job.run_once()  # nothing new: nothing to sign
    assert [c.seq for c in checkpoints.stored(store, TENANT)] == [6, 10, 11]
    assert verify(url)[0] == 0


def test_the_running_server_checkpoints_its_chains(db_url: str) -> None:
    """With the default settings: a chain never checkpointed is, within a second or two."""
    from stage0.store import checkpoints  # noqa: PLC0415
    from tests.helpers import request  # noqa: PLC0415
    from tests.service.conftest import running_app  # noqa: PLC0415

    with running_app(db_url) as api:
        for i in range(3):
            assert api.check(request(goal=f"Summarize ticket batch {i} for the team")
                             ).status_code == 200
        deadline = time.monotonic() + 15
        while not checkpoints.stored(api.store, "default") and time.monotonic() < deadline:
            time.sleep(0.2)
        made = checkpoints.stored(api.store, "default")
    assert made, "no checkpoint within 15 s"
    assert made[-1].seq >= 3
    assert made[-1].reason == "periodic"
    assert verify(db_url)[0] == 0


def test_checkpoint_refuses_a_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere.db"
    status, out = run("audit", "checkpoint", "--db", f"sqlite:///{missing}")
    assert status == 1
    assert "no Stage0 store" in out
    assert not missing.exists()


def test_checkpoint_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from stage0.store.checkpoints import CheckpointSettings  # noqa: PLC0415

    assert CheckpointSettings.from_env() == CheckpointSettings(10_000, 60.0)
    monkeypatch.setenv("STAGE0_CHECKPOINT_EVERY_ROWS", "0")
    monkeypatch.setenv("STAGE0_CHECKPOINT_INTERVAL_S", "0")
    assert not CheckpointSettings.from_env().enabled
    monkeypatch.setenv("STAGE0_CHECKPOINT_INTERVAL_S", "-1")
    with pytest.raises(ValueError, match="must not be negative"):
        CheckpointSettings.from_env()
