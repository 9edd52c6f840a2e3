"""Fixtures for the service: a fresh store on SQLite and on PostgreSQL, apps, keys, servers.

PostgreSQL is tested for real (127.0.0.1:5432, database `test`; `.ci/run` makes sure it runs):
each test gets its own fresh database, dropped afterwards. Set STAGE0_TEST_PG_URL to point
elsewhere; there is no silent skip when it is unreachable.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from stage0.app import Settings, create_app
from stage0.store import Store
from stage0.store.keys import create_key

PG_ADMIN_URL = os.environ.get("STAGE0_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


def _pg_admin() -> psycopg.Connection:
    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); start it "
                    "(.ci/run does) or set STAGE0_TEST_PG_URL")


@contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'stage0.db'}"
        return
    name = f"stage0_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with _pg_admin() as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.dispose()


@dataclass
class Api:
    client: TestClient
    store: Store
    key: str

    def new_key(self, tenant: str = "default", **kw: object) -> str:
        kw.setdefault("scopes", ["check", "audit:read"])
        kw.setdefault("unlimited", True)
        kw.setdefault("plan", "pro")
        return create_key(self.store, tenant=tenant, name=f"k-{uuid.uuid4().hex[:6]}",
                          **kw)[1]  # type: ignore[arg-type]

    def check(self, body: object, key: str | None = None, **headers: str) -> httpx.Response:
        return self.client.post("/check", json=body,
                                headers={"x-api-key": key or self.key, **headers})


@contextmanager
def running_app(db_url: str, frozen_time: str | None = "2026-03-17T10:00:00Z",
                policy: str | None = None) -> Iterator[Api]:
    store = Store(db_url)
    store.migrate()
    _, secret = create_key(store, tenant="default", name="test-admin",
                           scopes=["check", "approve", "audit:read", "admin"], plan="pro",
                           unlimited=True, principal="test-admin")
    try:
        app = create_app(Settings(db=db_url, frozen_time=frozen_time, policy=policy))
        with TestClient(app) as client:
            yield Api(client, store, secret)
    finally:  # also when the app refuses to start: no connection left for the GC to find
        store.dispose()


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with running_app(db_url) as a:
        yield a


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int | None = None) -> None:
        if self.process.poll() is None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(db_url: str, tmp_path: Path, *, workers: int = 1,
                 frozen_time: str | None = None, env: dict[str, str] | None = None) -> Server:
    """``stage0 serve`` in its own process; waits until /readyz answers."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    args = [sys.executable, "-m", "stage0", "serve", "--port", str(port), "--db", db_url,
            "--workers", str(workers)]
    if frozen_time:
        args += ["--frozen-time", frozen_time]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code in (200, 503):
                return Server(url, process, log)
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"server did not start: {log.read_text()}")
