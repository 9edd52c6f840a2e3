"""Cost of custom rules per decision: 10 rules against 10,000 (indexed by tool and bucket).

Run: ``python bench/rules.py``. Prints a Markdown table for docs/performance.md. Each pack adds
N CEL rules to the default pack, each scoped to its own tool (`svc<i>.*`), as an operator with
many services would write them; the request calls one of those tools, so one rule applies.
Target: 10,000 rules cost at most twice what 10 do.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import yaml

from stage0.contract.request import parse_instant
from stage0.engine import Engine
from stage0.policy import compile_document
from stage0.policy.loader import default_pack_text

REQUEST = {
    "goal": "Restart the billing worker in staging",
    "success_criteria": ["The worker is healthy"],
    "tools": ["svc7.restart"],
    "side_effects": ["write"],
    "constraints": ["allowed_environment: staging"],
    "context": {"environment": "staging"},
}


def pack_with(n: int) -> dict[str, Any]:
    doc = yaml.safe_load(default_pack_text())
    doc["rules"] = doc["rules"] + [
        {"code": f"SVC_RULE_{i}", "tools": [f"svc{i}.*"], "condition": "environment == 'prod'",
         "message": f"service {i} is frozen", "remediation": "wait"}
        for i in range(n)
    ]
    return doc


def measure(n: int, rounds: int = 3000) -> tuple[float, float, float]:
    started = time.perf_counter()
    policy = compile_document(pack_with(n))
    compile_s = time.perf_counter() - started
    engine = Engine(policy)
    at = parse_instant("2026-03-17T10:00:00Z")
    for _ in range(200):
        engine.check(REQUEST, at=at)
    samples = []
    for _ in range(rounds):
        t = time.perf_counter_ns()
        engine.check(REQUEST, at=at)
        samples.append((time.perf_counter_ns() - t) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)], compile_s


def main() -> int:
    rows = {n: measure(n) for n in (10, 1_000, 10_000)}
    print("| custom rules | p50 µs per decision | p99 µs | pack compile s |")
    print("|---|---|---|---|")
    for n, (p50, p99, comp) in rows.items():
        print(f"| {n:,} | {p50:.1f} | {p99:.1f} | {comp:.2f} |")
    ratio = rows[10_000][0] / rows[10][0]
    print(f"\n10,000 rules cost {ratio:.2f}x what 10 do per decision (target: at most 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
