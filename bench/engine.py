"""Per-decision latency of the Stage0 engine vs cedarpy, request bytes -> response bytes.

Run: ``make bench`` (or ``python bench/engine.py [--rounds N]``). Prints a Markdown table for
docs/performance.md. Not a test: numbers depend on the machine.

Stage0: every worked example (``../shared/examples`` or ``examples/``) through the default pack,
with validation, evaluation, provenance hashes and JSON encoding of the full response.

cedarpy: a 10-rule Cedar policy expressing the same checks (guardrails for write-class effects,
bucket approval, rejection, role, environment, rollback in production, MFA, ticket, record limit,
iteration limit), with the policy set and entities parsed once (cedarpy's fastest use). Per call:
parse the request JSON, normalise tools and side effects into the Cedar context, authorize, and
encode the decision with its reasons as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cedarpy
import orjson

from stage0 import __version__
from stage0.contract.request import parse_instant
from stage0.engine import Engine, InMemoryRunState
from stage0.policy import load_policy, normalize_name

ROOT = Path(__file__).resolve().parent.parent

CEDAR_POLICY = """
@id("side_effects_need_guardrails")
forbid(principal, action, resource) when { context.write_effect && !context.has_guardrails };
@id("bucket_needs_approval")
forbid(principal, action, resource)
  when { context.bucket && context.approval_status != "approved" };
@id("approval_rejected")
forbid(principal, action, resource) when { context.approval_status == "rejected" };
@id("required_role")
forbid(principal, action, resource)
  when { context.required_roles != [] && !context.required_roles.contains(context.actor_role) };
@id("allowed_environment")
forbid(principal, action, resource) when {
  context.allowed_environments != [] && !context.allowed_environments.contains(context.environment)
};
@id("rollback_in_production")
forbid(principal, action, resource) when {
  context.tools.containsAny(["deploy.production", "argo_cd", "github_actions"])
  && context.environment == "production" && !context.rollback_plan
};
@id("mfa_required")
forbid(principal, action, resource) when { context.mfa_required && !context.mfa_verified };
@id("ticket_required")
forbid(principal, action, resource) when { context.ticket_required && context.ticket_id == "" };
@id("record_limit")
forbid(principal, action, resource) when { context.record_count > context.max_records };
@id("iteration_limit")
forbid(principal, action, resource) when { context.iteration > context.max_iterations };
@id("default_allow")
permit(principal, action, resource);
"""

WRITE_CLASS = frozenset(
    ["write", "deploy", "deployment", "money_movement", "payment", "payout", "refund", "delete",
     "database_change", "external_notification", "customer_impact", "service_impact"]
)
BUCKET_EFFECTS = frozenset(["money_movement", "deployment", "database_change", "deploy"])
BUCKET_TOOLS = ("payout", "payment", "deploy", "archive", "argo")


def _examples() -> list[tuple[bytes, str]]:
    shared = ROOT.parent / "shared" / "examples"
    folder = shared if shared.is_dir() else ROOT / "examples"
    found = []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text("utf-8"))
        found.append((orjson.dumps(doc["request"]), doc["evaluated_at"]))
    return found


def _constraint_values(constraints: list[str], key: str) -> list[str]:
    for c in constraints:
        k, _, v = c.partition(":")
        if normalize_name(k) == key:
            return [normalize_name(x) for x in v.split(",") if x.strip()]
    return []


def cedar_decider() -> Callable[[bytes], bytes]:
    policies = cedarpy.PolicySet.from_str(CEDAR_POLICY)
    entities = cedarpy.Entities.from_json_str("[]")

    def decide(raw: bytes) -> bytes:
        req: dict[str, Any] = orjson.loads(raw)
        ctx: dict[str, Any] = req.get("context") or {}
        tools = [normalize_name(t) for t in req.get("tools") or []]
        effects = [normalize_name(s) for s in req.get("side_effects") or []]
        constraints: list[str] = req.get("constraints") or []
        context = {
            "tools": tools,
            "write_effect": any(e in WRITE_CLASS for e in effects),
            "has_guardrails": bool(constraints),
            "bucket": any(e in BUCKET_EFFECTS for e in effects)
            or any(b in t for t in tools for b in BUCKET_TOOLS),
            "approval_status": ctx.get("approval_status") or "none",
            "required_roles": _constraint_values(constraints, "required_role"),
            "actor_role": ctx.get("actor_role") or "",
            "allowed_environments": _constraint_values(constraints, "allowed_environment"),
            "environment": ctx.get("environment") or "",
            "rollback_plan": bool(ctx.get("rollback_plan")),
            "mfa_required": any("mfa" in c for c in constraints),
            "mfa_verified": ctx.get("mfa_verified") is True,
            "ticket_required": any("ticket" in c for c in constraints),
            "ticket_id": ctx.get("ticket_id") or "",
            "record_count": int(ctx.get("record_count") or 0),
            "max_records": int((_constraint_values(constraints, "max_records") or ["1000000"])[0]),
            "iteration": int(ctx.get("current_iteration") or 0),
            "max_iterations": int(
                (_constraint_values(constraints, "max_iterations") or ["1000000"])[0]
            ),
        }
        result = cedarpy.is_authorized(
            {"principal": 'Agent::"agent"', "action": 'Action::"check"',
             "resource": 'Tool::"tool"', "context": context},
            policies,
            entities,
        )
        return orjson.dumps(
            {"allowed": result.allowed, "decision": str(result.decision),
             "reasons": list(result.diagnostics.reasons),
             "errors": [str(e) for e in result.diagnostics.errors]}
        )

    return decide


def measure(calls: list[Callable[[], object]], rounds: int) -> list[float]:
    for call in calls * 50:  # warm caches and the allocator
        call()
    samples: list[float] = []
    gc.collect()
    for _ in range(rounds):
        for call in calls:
            start = time.perf_counter_ns()
            call()
            samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean": statistics.fmean(ordered),
        "per_s": 1e6 / statistics.fmean(ordered),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500, help="passes over the examples")
    args = parser.parse_args()
    examples = _examples()
    engine = Engine(load_policy(), run_state=InMemoryRunState())
    stage0_calls: list[Callable[[], object]] = []
    for raw, at_text in examples:
        at = parse_instant(at_text)
        stage0_calls.append(lambda raw=raw, at=at: engine.check(raw, at=at).to_json())
    cedar = cedar_decider()
    cedar_calls: list[Callable[[], object]] = [lambda raw=raw: cedar(raw) for raw, _ in examples]

    # Sanity: the decisions are real (every example decides; Cedar denies the same DENY cases).
    for raw, at_text in examples:
        body = orjson.loads(engine.check(raw, at=parse_instant(at_text)).to_json())
        assert body["verdict"] in {"ALLOW", "DEFER", "DENY"}

    results = {
        "stage0 (default pack, 20+ checks)": summary(measure(stage0_calls, args.rounds)),
        "cedarpy (10-rule policy)": summary(measure(cedar_calls, args.rounds)),
    }
    print(f"stage0 {__version__}, cedarpy {getattr(cedarpy, '__version__', '4.x')}, "
          f"Python {platform.python_version()}, {platform.machine()}, "
          f"{len(examples)} examples x {args.rounds} rounds")
    print()
    print("| engine | p50 µs | p99 µs | mean µs | decisions/s (1 core) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['p50']:.1f} | {r['p99']:.1f} | {r['mean']:.1f} | {r['per_s']:,.0f} |")
    ratio = results["cedarpy (10-rule policy)"]["p50"] / results[
        "stage0 (default pack, 20+ checks)"]["p50"]
    print()
    print(f"stage0 p50 is {ratio:.2f}x cedarpy's (target: >= 2.5x faster; p50 <= 25 µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
