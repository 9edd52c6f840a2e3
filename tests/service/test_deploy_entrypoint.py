"""deploy/entrypoint.sh run for real (by /bin/sh, as in the image), with ``STAGE0_BIN`` pointing
at this virtualenv's ``stage0``: migrate and serve on SQLite and on PostgreSQL, a second start on
the same store, the wait for PostgreSQL (a database that appears late, one that never answers),
and the subcommand pass-through. The Dockerfile's HEALTHCHECK command runs against the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stage0 import __version__
from tests.service.conftest import PG_ADMIN_URL, _pg_admin, free_port
from tests.service.test_processes import CHECK_BODY
from tests.test_deploy import ENTRYPOINT, healthcheck_command

STAGE0 = Path(sys.executable).parent / "stage0"
ADMIN_KEY = re.compile(r"^    (s0_\S+)$", re.MULTILINE)


def _env(**settings: str) -> dict[str, str]:
    """This environment without any STAGE0_ setting of its own, plus ``settings``."""
    assert STAGE0.exists(), f"{STAGE0} is missing: install the package into this virtualenv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGE0_")}
    return {**env, "STAGE0_BIN": str(STAGE0), **settings}


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text("utf-8", errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until ``/readyz`` answers 200 (the store is migrated and writable)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the entrypoint exited ({self.process.returncode}):\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"/readyz did not answer 200 within {timeout} s:\n{self.output()}")

    def terminate(self) -> int:
        """SIGTERM, as ``docker stop`` sends; the exit status, once it has stopped cleanly."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"still running 20 s after SIGTERM:\n{self.output()}")
        return self.process.returncode

    def assert_stopped_cleanly(self) -> None:
        """After SIGTERM: the server shut down gracefully. With one worker uvicorn re-raises the
        SIGTERM once it has shut down (status -15 here, 143 in a container); several workers'
        supervisor exits 0."""
        code, out = self.process.returncode, self.output()
        assert code in (0, -signal.SIGTERM), f"exit status {code}:\n{out}"
        assert "Application shutdown complete." in out, out
        assert "Traceback" not in out, out


def _start(tmp_path: Path, env: dict[str, str], *args: str) -> Running:
    port = free_port()
    log = tmp_path / f"entrypoint-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ENTRYPOINT), *args], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            env={**env, "STAGE0_HOST": "127.0.0.1", "STAGE0_PORT": str(port)},
        )
    return Running(process, log, port)


def _check(running: Running, key: str) -> None:
    r = httpx.post(f"{running.url}/check", json=CHECK_BODY, headers={"x-api-key": key},
                   timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "ALLOW", r.json()


def _healthcheck(port: int) -> int:
    """The Dockerfile's HEALTHCHECK command, with this virtualenv's python for the image's."""
    command = [sys.executable, *healthcheck_command()[1:]]
    return subprocess.run(command, env={**os.environ, "STAGE0_PORT": str(port)},
                          capture_output=True, timeout=30, check=False).returncode


def _run(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENTRYPOINT), *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)


# -- migrate, then serve ----------------------------------------------------------------------


def test_entrypoint_migrates_and_serves_then_starts_again_on_the_same_store(
    db_url: str, tmp_path: Path,
) -> None:
    env = _env(STAGE0_DATABASE_URL=db_url)
    first = _start(tmp_path, env)
    try:
        first.wait_ready()
        out = first.output()
        keys = ADMIN_KEY.findall(out)
        assert len(keys) == 1, out
        _check(first, keys[0])
        assert _healthcheck(first.port) == 0
    finally:
        first.terminate()
    first.assert_stopped_cleanly()
    out = first.output()
    assert re.search(r"^created \S+", out, re.MULTILINE), out  # `stage0 migrate` ran first
    assert out.index("created ") < out.index("serving  http://127.0.0.1")
    assert "(1 worker)" in out
    assert "waiting" not in out, out
    assert _healthcheck(first.port) != 0  # nothing answers any more

    # a restart, as after an upgrade: migrate finds the schema up to date, no new key is made
    second = _start(tmp_path, {**env, "STAGE0_WORKERS": "2"}, "serve", "--access-log")
    try:
        second.wait_ready()
        _check(second, keys[0])
        assert _healthcheck(second.port) == 0
    finally:
        code = second.terminate()
    second.assert_stopped_cleanly()
    assert code == 0, "the supervisor of several workers exits 0 on SIGTERM"
    out = second.output()
    assert re.search(r"^up to date: \S+", out, re.MULTILINE), out
    assert not ADMIN_KEY.search(out), out
    assert "(2 workers)" in out
    assert '"POST /check HTTP/1.1" 200' in out, "--access-log was not passed on to serve"


def test_entrypoint_waits_for_a_postgresql_database_that_appears_late(tmp_path: Path) -> None:
    name = f"stage0_test_{uuid.uuid4().hex[:12]}"
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    running = _start(tmp_path, _env(STAGE0_DATABASE_URL=url, STAGE0_DB_WAIT_S="60"))
    try:
        time.sleep(2.5)
        out = running.output()
        assert running.process.poll() is None, out
        assert "waiting up to" in out, out
        assert f"/{name}" in out, out
        assert "serving" not in out
        with _pg_admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        running.wait_ready()
        keys = ADMIN_KEY.findall(running.output())
        assert len(keys) == 1
        _check(running, keys[0])
    finally:
        running.terminate()
        with _pg_admin() as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    running.assert_stopped_cleanly()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_entrypoint_gives_up_on_an_unreachable_postgresql(scheme: str, tmp_path: Path) -> None:
    url = f"{scheme}://stage0:hunter2@127.0.0.1:1/stage0_nowhere"
    shown = f"{scheme.partition('+')[0]}://stage0:***@127.0.0.1:1/stage0_nowhere"  # no driver
    started = time.monotonic()
    result = _run(tmp_path, _env(STAGE0_DATABASE_URL=url, STAGE0_DB_WAIT_S="2"))
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 10, elapsed
    assert (f"stage0-entrypoint: PostgreSQL at {shown} did not accept connections within 2 s "
            "(STAGE0_DB_WAIT_S): connection failed: ") in result.stderr, result.stderr
    assert "Connection refused" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert result.stdout == "", "migrate or serve ran"


def test_entrypoint_refuses_a_bad_wait_and_a_missing_binary(tmp_path: Path) -> None:
    pg = "postgresql://stage0@127.0.0.1:1/x"
    result = _run(tmp_path, _env(STAGE0_DATABASE_URL=pg, STAGE0_DB_WAIT_S="soon"))
    assert result.returncode == 2
    assert "STAGE0_DB_WAIT_S must be a whole number of seconds, not 'soon'" in result.stderr
    result = _run(tmp_path, {**_env(), "STAGE0_BIN": str(tmp_path / "no-such-stage0")})
    assert result.returncode == 127
    assert "no-such-stage0: not found" in result.stderr


# -- any other subcommand runs instead of the server -------------------------------------------


def test_entrypoint_passes_other_subcommands_through(tmp_path: Path) -> None:
    # no wait and no migrate: the PostgreSQL URL below answers nothing
    unreachable = _env(STAGE0_DATABASE_URL="postgresql://stage0@127.0.0.1:1/x")
    version = _run(tmp_path, unreachable, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"stage0, version {__version__}"
    assert version.stderr == ""
    help_ = _run(tmp_path, unreachable, "--help")
    assert help_.returncode == 0, help_.stderr
    assert "Commands:" in help_.stdout

    env = _env(STAGE0_DATABASE_URL=f"sqlite:///{tmp_path / 'store' / 'stage0.db'}")
    (tmp_path / "store").mkdir()
    missing = _run(tmp_path, env, "keys", "list")
    assert missing.returncode != 0
    assert "no Stage0 store" in missing.stderr, missing.stderr
    migrate = _run(tmp_path, env, "migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert migrate.stdout.startswith("created "), migrate.stdout
    created = _run(tmp_path, env, "keys", "create", "--tenant", "t", "--name", "n")
    assert created.returncode == 0, created.stderr
    assert "s0_" in created.stdout, created.stdout
    listed = _run(tmp_path, env, "keys", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert [k["name"] for k in json.loads(listed.stdout)] == ["n"], listed.stdout
