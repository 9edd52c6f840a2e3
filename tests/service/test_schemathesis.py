"""Schemathesis against a live ``stage0 serve`` (SQLite): no generated request gets a 5xx.

The CLI runs in a subprocess with an empty config file and no report upload; it exits non-zero
when any check fails, and the only check is ``not_a_server_error``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import httpx

from stage0.store import Store, ledger
from stage0.store.keys import create_key
from tests.service.conftest import fresh_database, start_server

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
MAX_EXAMPLES = 100
SEED = 20260317


def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    assert SCHEMATHESIS.exists(), f"schemathesis is not installed at {SCHEMATHESIS}"
    with fresh_database("sqlite", tmp_path) as url:
        store = Store(url)
        store.migrate()
        _, key = create_key(store, tenant="default", name="fuzz-admin",
                            scopes=["check", "approve", "audit:read", "admin"], plan="pro",
                            principal="fuzzer",
                            unlimited=True)
        with warnings.catch_warnings():  # start_server leaves its log file handle to the GC
            warnings.simplefilter("ignore", ResourceWarning)
            server = start_server(url, tmp_path, frozen_time="2026-03-17T10:00:00Z")
        try:
            # A few logged decisions, so that the decision-log endpoints have rows to return.
            for tools in (["tickets.search"], ["payments.refund"], ["deploy.production"]):
                r = httpx.post(f"{server.url}/check", headers={"x-api-key": key}, timeout=30,
                               json={"goal": "Do the documented task for ticket 1042",
                                     "tools": tools, "side_effects": [],
                                     "context": {"run_id": "r-1"}})
                assert r.status_code == 200, r.text
            seeded = ledger.count(store)

            config = tmp_path / "schemathesis.toml"
            config.write_text("")  # hermetic: no config found in a parent directory
            args = [
                str(SCHEMATHESIS), "--config-file", str(config), "run",
                f"{server.url}/openapi.json",
                "--header", f"x-api-key: {key}",
                "--checks", "not_a_server_error",
                "--max-examples", str(MAX_EXAMPLES),
                "--seed", str(SEED),
                "--workers", "1",  # its 2-worker mode crashes on CPython 3.11 (AST recursion)
                "--request-timeout", "20",
                "--generation-database", "none",
                "--no-color",
            ]
            env = {**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"}
            proc = subprocess.run(  # the venv's own schemathesis
                args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150,
                check=False,
            )
            output = proc.stdout + proc.stderr
            server_log = server.log.read_text(errors="replace")[-6000:]
            assert proc.returncode == 0, (
                f"schemathesis exited {proc.returncode}:\n{output}\n--- server log ---\n"
                f"{server_log}"
            )
            assert "generated" in output, output
            assert server.process.poll() is None, server_log
            # The run reached the API: /check requests from schemathesis were logged.
            assert ledger.count(store) > seeded, output
        finally:
            server.stop()
            store.dispose()
