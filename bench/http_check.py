"""Throughput and latency of POST /check over HTTP, with the durable decision log.

Run: ``make bench`` (or
``python bench/http_check.py [--duration S] [--warmup S] [--connections N]``).
Needs ``wrk`` (Debian package ``wrk``). Load goes to 127.0.0.1 only and each run is bounded by
``--warmup`` plus ``--duration``: every target gets the same load for the warm-up seconds first
(not counted: a fresh server and a fresh store fill their caches), then the measured run.
Three targets are measured in the same run, each with the same number of server processes: a
raw-ASGI hello world under uvicorn (the ceiling of the HTTP stack), ``stage0 serve`` on SQLite
and ``stage0 serve`` on PostgreSQL (a fresh database on 127.0.0.1:5432). The requests cycle
through the worked examples. Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py: drop its folder from the path so the stdlib's `http` imports.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg

from stage0.store import Store
from stage0.store.keys import create_key

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("STAGE0_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bodies() -> list[str]:
    shared = ROOT.parent / "shared" / "examples"
    folder = shared if shared.is_dir() else ROOT / "examples"
    return [json.dumps(json.loads(p.read_text())["request"]) for p in sorted(folder.glob("*.json"))]


def _wait(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not start")


@contextmanager
def _server(args: list[str], probe: str) -> Iterator[str]:
    port = _port()
    process = subprocess.Popen(
        [*args, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + probe, process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def _pg_database() -> Iterator[str]:
    name = f"stage0_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _key(db_url: str) -> str:
    store = Store(db_url)
    store.migrate()
    _, secret = create_key(store, tenant="bench", name="bench", scopes=["check"], plan="pro",
                           unlimited=True)
    store.dispose()
    return secret


def _lua(key: str, bodies: list[str], folder: Path) -> Path:
    items = ",\n".join(f"[==[{b}]==]" for b in bodies)
    script = folder / "check.lua"
    script.write_text(
        f"local bodies = {{\n{items}\n}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i + 1\n"
        "  local body = bodies[(i % #bodies) + 1]\n"
        f'  return wrk.format("POST", "/check", {{["x-api-key"] = "{key}", '
        '["content-type"] = "application/json"}, body)\n'
        "end\n"
    )
    return script


def _wrk(url: str, script: Path, duration: int, connections: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    def unit(value: str, suffix: str) -> float:
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[suffix]
        return float(value) * scale
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not (p50 and p99 and rps and total):
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    return {"rps": float(rps.group(1)), "p50": unit(*p50.groups()), "p99": unit(*p99.groups()),
            "requests": float(total.group(1)), "non_2xx": float(errors.group(1)) if errors else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per target")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of the same load before each measurement (not counted)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    python = sys.executable
    stage0 = [python, "-m", "stage0", "serve", "--workers", str(args.workers),
              "--frozen-time", "2026-03-17T10:00:00Z"]
    bodies = _bodies()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hello = [python, "-m", "uvicorn", "bench.hello_asgi:app", "--workers",
                 str(args.workers), "--no-access-log", "--log-level", "warning"]
        def measure(url: str, script: Path) -> dict[str, float]:
            # a fresh server and store warm up first (caches, prepared statements, the new
            # tables' first pages): the same load, not counted
            if args.warmup > 0:
                _wrk(url, script, args.warmup, args.connections, args.threads)
            return _wrk(url, script, args.duration, args.connections, args.threads)

        with _server(hello, "/") as base:
            script = _lua("none", bodies, folder)
            results["raw ASGI hello world (uvicorn)"] = measure(base + "/check", script)
        sqlite_url = f"sqlite:///{folder / 'bench.db'}"
        script = _lua(_key(sqlite_url), bodies, folder)
        with _server([*stage0, "--db", sqlite_url], "/healthz") as base:
            results["stage0 serve, SQLite"] = measure(base, script)
        with _pg_database() as pg_url:
            script = _lua(_key(pg_url), bodies, folder)
            with _server([*stage0, "--db", pg_url], "/healthz") as base:
                results["stage0 serve, PostgreSQL"] = measure(base, script)
    print(f"{args.connections} connections, {args.workers} server processes, wrk "
          f"{args.threads} threads, {args.duration} s per target after {args.warmup} s of "
          f"warm-up, {len(bodies)} example bodies")
    print()
    print("| target | requests/s | p50 ms | p99 ms | requests | non-2xx |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
              f"{r['requests']:,.0f} | {r['non_2xx']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
