"""#17 item 7 without the new command: a running server makes decisions (and, by itself,
checkpoints its chains); an attacker with write access to the log then truncates the tail and
rewinds the head, or rehashes the chain from a row. The chain alone stays self-consistent, and
`stage0 audit verify` must fail anyway. Before signed checkpoints, both passed verify."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from stage0.store import Store, ledger
from stage0.store.schema import chain_checkpoints
from tests.helpers import request
from tests.service.conftest import fresh_database, running_app
from tests.service.test_audit_checkpoints import rehash_from, rows, truncate, verify


def _checkpointed(store: Store) -> int:
    with store.connect() as conn:
        return int(conn.execute(select(func.max(chain_checkpoints.c.seq))).scalar() or 0)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("attack", ["truncate_tail", "rehash_from_row_5"])
def test_tampering_after_a_running_server_is_caught_by_verify(tmp_path: Path, backend: str,
                                                             attack: str) -> None:
    with fresh_database(backend, tmp_path) as url:
        with running_app(url) as api:
            for i in range(6):
                answer = api.check(request(goal=f"Summarize ticket batch {i} for the team"))
                assert answer.status_code == 200
            deadline = time.monotonic() + 20
            while _checkpointed(api.store) < 6 and time.monotonic() < deadline:
                time.sleep(0.1)  # the server checkpoints a new chain within about a second
            assert _checkpointed(api.store) == 6
        store = Store(url)
        try:
            assert len(rows(store, "default")) == 6
            assert verify(url)[0] == 0
            if attack == "truncate_tail":
                truncate(store, keep=4, tenant="default")
            else:
                rehash_from(store, 5, tenant="default")
            assert all(r.ok for r in ledger.verify(store))  # the chain alone looks intact
            status, out = verify(url)
            assert status == 1, f"tampering ({attack}) passed `stage0 audit verify`:\n{out}"
            assert "BROKEN" in out
        finally:
            store.dispose()
