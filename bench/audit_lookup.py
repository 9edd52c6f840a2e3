"""Audit lookup by request_id on a large, partitioned decision log (PostgreSQL).

Run: ``python bench/audit_lookup.py [--rows 10000000] [--db postgresql://…/db]``. Not a test:
numbers depend on the machine. Without ``--db`` it creates the database ``stage0_bench_audit``
on 127.0.0.1 (dropped afterwards unless ``--keep``); ``--reuse`` measures a database an earlier
``--keep`` run filled.

Fill: the store is migrated (``decisions`` partitioned by month, migration 0012), the monthly
partitions of the last ``--months`` months are created, and ``--rows`` rows are inserted by
PostgreSQL itself (``INSERT … SELECT … FROM generate_series``, in chunks, indexes in place as in
production): ``--tenants`` tenants, each a chain numbered 1, 2, 3…, the rows spread evenly over
the months, request ids UUID-shaped (``md5(i)``), JSON columns of a few hundred bytes (real rows
carry 3-4 KB; the lookup reads one row either way). The hashes are not a real chain: nothing
here verifies it.

Measure: ``--lookups`` lookups of random existing request ids of random tenants each way, after
``--warmup`` lookups not counted, the two ways alternating (each with ids of its own), each
timed from the call to the decoded row:

- ``ledger.get`` — what ``GET /v1/decisions/{request_id}`` runs (SQLAlchemy Core, a pooled
  connection, the row decoded into the API's JSON shape);
- ``raw`` — the same ``SELECT`` on one psycopg connection (a prepared statement): the
  database's share;
- ``EXPLAIN ANALYZE`` of one lookup: the plan and the server's execution time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime

import psycopg

from stage0.store import Store, ledger
from stage0.store.retention import ensure_partitions, partitions

ADMIN = os.environ.get("STAGE0_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
NAME = "stage0_bench_audit"
CHUNK = 500_000

FILL = """
INSERT INTO decisions (tenant_id, seq, request_id, key_id, kind, http_status, verdict, decision,
    policy_version, policy_sha256, input_sha256, action_digest, environment, tools, buckets,
    request, redacted_paths, response, frozen_time, timings, created_us, prev_hash, row_hash)
SELECT 'tenant-' || (i % %(tenants)s), i / %(tenants)s + 1,
       substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-a'
           || substr(h, 18, 3) || '-' || substr(h, 21, 12),
       'key_' || (i % 97), 'decision', 200,
       CASE WHEN i % 5 = 0 THEN 'DENY' WHEN i % 7 = 0 THEN 'DEFER' ELSE 'ALLOW' END,
       CASE WHEN i % 5 = 0 THEN 'NO_GO' WHEN i % 7 = 0 THEN 'DEFER' ELSE 'GO' END,
       'stage0-policy-pack@1.4.0', repeat('a', 64), h || h, h || h,
       'production', '["deploy.production"]', '["deploy"]',
       '{"goal":"roll out build ' || i || '","tools":["deploy.production"],'
           || '"context":{"environment":"production","ticket":"OPS-' || (i % 10000) || '"}}',
       '[]',
       '{"verdict":"ALLOW","decision":"GO","request_id":"' || h || '","issues":[],'
           || '"policy_version":"stage0-policy-pack@1.4.0","risk":{"score":0.2}}',
       NULL, '{"parse_us":40,"eval_us":25,"queued_us":300}',
       %(start)s + i * %(step)s, h || h, md5(h) || md5(h || 'x')
FROM (SELECT i, md5(i::text) AS h FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS i) AS g
"""

LOOKUP = "SELECT * FROM decisions WHERE tenant_id = %s AND request_id = %s"


def request_id(i: int) -> str:
    h = hashlib.md5(str(i).encode()).hexdigest()  # ids, not security
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fill(url: str, rows: int, tenants: int, months: int) -> tuple[int, int, float]:
    store = Store(url)
    store.migrate()
    now_us = int(time.time() * 1e6)
    start_us = now_us - months * 30 * 86400 * 1_000_000
    ensure_partitions(store, now_us, since_us=start_us)
    store.dispose()
    step = max(1, (now_us - start_us) // rows)
    began = time.perf_counter()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        for low in range(0, rows, CHUNK):
            high = min(rows, low + CHUNK) - 1
            conn.execute(FILL.replace("%(tenants)s", str(tenants)).replace(
                "%(start)s", str(start_us)).replace("%(step)s", str(step)).replace(
                "%(low)s", str(low)).replace("%(high)s", str(high)))
            done = high + 1
            rate = done / (time.perf_counter() - began)
            print(f"  {done:,} rows ({rate:,.0f}/s)", file=sys.stderr, flush=True)
        conn.execute("INSERT INTO chain_heads (tenant_id, seq, row_hash) "
                     "SELECT tenant_id, max(seq), repeat('0', 64) FROM decisions "
                     "GROUP BY tenant_id")
        conn.execute("VACUUM ANALYZE decisions")
    return start_us, step, time.perf_counter() - began


def measure(url: str, rows: int, tenants: int, lookups: int, warmup: int) -> dict[str, object]:
    """The two ways alternate, each on ids of its own, so that neither gets the other's
    warmed cache nor pays alone for a cold one."""
    rng = random.Random(7)
    picks = [rng.randrange(rows) for _ in range(2 * (lookups + warmup))]
    wanted = [(f"tenant-{i % tenants}", request_id(i)) for i in picks]
    store = Store(url)
    api: list[float] = []
    raw: list[float] = []
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as conn:
        for n, (tenant, rid) in enumerate(wanted):
            t0 = time.perf_counter()
            if n % 2:
                found = ledger.get(store, tenant, rid)
                elapsed = time.perf_counter() - t0
                assert found is not None, (tenant, rid)
                assert found["request_id"] == rid
                into = api
            else:
                row = conn.execute(LOOKUP, (tenant, rid), prepare=True).fetchone()
                elapsed = time.perf_counter() - t0
                assert row is not None
                into = raw
            if n >= 2 * warmup:
                into.append(elapsed * 1e3)
        tenant, rid = wanted[-1]
        plan = [r[0] for r in conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + LOOKUP, (tenant, rid))]
        count = conn.execute("SELECT count(*) FROM decisions").fetchone()
        size = conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits "
            "WHERE inhparent = 'decisions'::regclass").fetchone()
        version = conn.execute("SHOW server_version").fetchone()
    store.dispose()
    return {"api": api, "raw": raw, "plan": plan, "count": count[0] if count else 0,
            "size": size[0] if size else "?", "server": version[0] if version else "?"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--db", default=None, help="An empty PostgreSQL database to fill "
                        "(or, with --reuse, one filled before); kept afterwards.")
    parser.add_argument("--keep", action="store_true", help="Do not drop the created database.")
    parser.add_argument("--reuse", action="store_true",
                        help="Measure the database as an earlier --keep run left it.")
    args = parser.parse_args()
    url, created = args.db, False
    if url is None:
        url = ADMIN.rsplit("/", 1)[0] + "/" + NAME
        if not args.reuse:
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{NAME}"')
                admin.execute(f'CREATE DATABASE "{NAME}"')
            created = True
    try:
        if not args.reuse:
            print(f"filling {args.rows:,} rows …", file=sys.stderr)
            _, _, seconds = fill(url, args.rows, args.tenants, args.months)
            print(f"filled in {seconds:.0f} s", file=sys.stderr)
        result = measure(url, args.rows, args.tenants, args.lookups, args.warmup)
        store = Store(url)
        parts = len(partitions(store))
        store.dispose()
    finally:
        if created and not args.keep:
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')
    api, raw = result["api"], result["raw"]
    assert isinstance(api, list)
    assert isinstance(raw, list)
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"PostgreSQL {result['server']}")
    print(f"{result['count']:,} rows in {parts} monthly partitions + default "
          f"({result['size']}), {args.tenants} tenants; {len(api)} lookups after "
          f"{args.warmup} warm-up")
    print()
    print("| lookup by request_id | p50 ms | p90 ms | p99 ms | max ms | mean ms |")
    print("|---|---|---|---|---|---|")
    for label, values in (("`ledger.get` (API path)", api), ("raw psycopg, prepared", raw)):
        print(f"| {label} | {statistics.median(values):.3f} | {percentile(values, 0.9):.3f} | "
              f"{percentile(values, 0.99):.3f} | {max(values):.3f} | "
              f"{statistics.fmean(values):.3f} |")
    print()
    print("EXPLAIN ANALYZE of one lookup:")
    for line in result["plan"]:  # type: ignore[attr-defined]
        print(f"    {line}")


if __name__ == "__main__":
    main()
