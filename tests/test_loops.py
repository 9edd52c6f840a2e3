"""Loop limits at and over their boundaries, from client counters and from the run state."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stage0.engine import Engine, InMemoryRunState
from stage0.policy import load_policy
from stage0.testing import FixedClock, SequentialIds
from tests.helpers import codes, decide, request

LIMITS = ["max_iterations: 5", "timeout_seconds: 120", "max_cost_usd: 2.00", "same_tool_limit: 2"]


def loop(**context: Any) -> dict[str, Any]:
    return request(tools=["agent.retry_step"], constraints=LIMITS,
                   context={"run_id": "r1", **context})


@pytest.mark.parametrize(
    ("note", "context", "code", "fires"),
    [
        ("iteration 5 at max_iterations 5", {"current_iteration": 5}, "LOOP_ITERATION_LIMIT",
         False),
        ("iteration 6 over max_iterations 5", {"current_iteration": 6}, "LOOP_ITERATION_LIMIT",
         True),
        ("elapsed at the timeout", {"elapsed_seconds": 120}, "LOOP_TIMEOUT", False),
        ("elapsed over the timeout", {"elapsed_seconds": 120.5}, "LOOP_TIMEOUT", True),
        ("cost at the limit", {"cumulative_cost_usd": 2.0}, "COST_LIMIT_EXCEEDED", False),
        ("cost over the limit", {"cumulative_cost_usd": 2.01}, "COST_LIMIT_EXCEEDED", True),
        ("2nd identical call at same_tool_limit 2", {"recent_tools": ["agent.retry_step"]},
         "LOOP_SAME_TOOL_LIMIT", False),
        ("3rd identical call over same_tool_limit 2",
         {"recent_tools": ["agent.retry_step", "agent.retry_step"]}, "LOOP_SAME_TOOL_LIMIT", True),
        ("only trailing repeats count",
         {"recent_tools": ["agent.retry_step", "other", "agent.retry_step"]},
         "LOOP_SAME_TOOL_LIMIT", False),
        ("current_tool names this call's tool",
         {"current_tool": "Agent.Retry-Step", "recent_tools": ["agent.retry_step"] * 2},
         "LOOP_SAME_TOOL_LIMIT", True),
    ],
)
def test_boundaries(note: str, context: dict[str, Any], code: str, fires: bool) -> None:
    decision = decide(loop(**context))
    assert (code in codes(decision)) is fires, note
    if fires:
        assert decision.verdict == "DEFER"


def test_no_repeat_calls_means_one() -> None:
    body = request(tools=["x.call"], constraints=["no_repeat_calls"],
                   context={"recent_tools": ["x.call"]})
    assert "LOOP_SAME_TOOL_LIMIT" in codes(decide(body))


def test_timeout_units() -> None:
    body = request(constraints=["timeout: 2m"], context={"elapsed_seconds": 121})
    assert "LOOP_TIMEOUT" in codes(decide(body))


def _engine(clock: FixedClock, state: InMemoryRunState) -> Engine:
    return Engine(load_policy(), run_state=state, clock=clock, ids=SequentialIds())


def test_counters_left_out_come_from_the_run_state() -> None:
    clock = FixedClock("2026-03-17T10:00:00Z")
    engine = _engine(clock, InMemoryRunState())
    body = request(tools=["agent.step"], constraints=["max_iterations: 3"],
                   context={"run_id": "run-a"})
    verdicts = []
    for _ in range(4):
        verdicts.append(engine.check(body).verdict)
        clock.advance(10)
    assert verdicts == ["ALLOW", "ALLOW", "ALLOW", "DEFER"]
    last = engine.check(body).body["guardrail_checks"]["loop"]
    assert last["iteration"] == 5
    assert last["sources"]["iteration"] == "run_state"
    assert last["elapsed_seconds"] == 40


def test_omitting_a_counter_cannot_reset_it() -> None:
    clock = FixedClock("2026-03-17T10:00:00Z")
    engine = _engine(clock, InMemoryRunState())
    first = request(tools=["agent.step"], constraints=["timeout_seconds: 60"],
                    context={"run_id": "run-b"})
    engine.check(first)
    clock.advance(61)
    assert "LOOP_TIMEOUT" in engine.check(first).issue_codes


def test_run_state_tracks_repeated_tools_and_costs() -> None:
    clock = FixedClock("2026-03-17T10:00:00Z")
    engine = _engine(clock, InMemoryRunState())
    body = request(tools=["agent.retry"], constraints=["same_tool_limit: 2", "max_cost_usd: 1"],
                   context={"run_id": "run-c", "cost_usd": 0.4})
    results = [engine.check(body).issue_codes for _ in range(3)]
    assert "LOOP_SAME_TOOL_LIMIT" not in results[1]
    assert "LOOP_SAME_TOOL_LIMIT" in results[2]
    assert "COST_LIMIT_EXCEEDED" not in results[1]  # 0.8
    assert "COST_LIMIT_EXCEEDED" in results[2]  # 1.2


def test_runs_are_separate_per_tenant_and_run_id() -> None:
    clock = FixedClock("2026-03-17T10:00:00Z")
    state = InMemoryRunState()
    engine = _engine(clock, state)
    body = request(constraints=["max_iterations: 1"], context={"run_id": "shared"})
    assert engine.check(body, tenant="a").verdict == "ALLOW"
    assert engine.check(body, tenant="b").verdict == "ALLOW"
    assert engine.check(body, tenant="a").verdict == "DEFER"


def test_run_state_is_atomic_under_threads() -> None:
    state = InMemoryRunState()
    at = datetime(2026, 3, 17, tzinfo=UTC)
    seen: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for i in range(200):
            snap = state.observe("t", "run", at=at + timedelta(seconds=i), tool="x", cost_usd=0.5)
            with lock:
                seen.append(snap.iterations)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(1, 1601))
    final = state.observe("t", "run", at=at, tool=None, cost_usd=0.0)
    assert final.iterations == 1601
    assert final.cost_usd == pytest.approx(800.0)


@pytest.mark.parametrize(
    ("note", "context", "values", "sources"),
    [
        ("no run, no counters", {},
         (None, None, None), (None, None, None, None)),
        ("client counters", {"current_iteration": 2, "elapsed_seconds": 5.0,
                             "recent_tools": ["A.B"], "cumulative_cost_usd": 1.5},
         (2, 5.0, 1.5), ("client", "client", "client", "client")),
        ("a step cost alone stands for the run's", {"cost_usd": 0.25},
         (None, None, 0.25), (None, None, None, "client")),
        ("the run state fills in", {"run_id": "r"},
         (1, 0.0, 0.0), ("run_state", "run_state", "run_state", "run_state")),
        ("with a run, the step cost adds to it", {"run_id": "r", "cost_usd": 0.25},
         (1, 0.0, 0.25), ("run_state", "run_state", "run_state", "run_state")),
        ("client values win over the run state", {"run_id": "r", "current_iteration": 7,
                                                   "cumulative_cost_usd": 3.0},
         (7, 0.0, 3.0), ("client", "run_state", "run_state", "client")),
    ],
)
def test_each_counter_and_where_it_came_from(
    note: str, context: dict[str, Any], values: tuple[Any, ...], sources: tuple[Any, ...]
) -> None:
    engine = _engine(FixedClock("2026-03-17T10:00:00Z"), InMemoryRunState())
    body = engine.check(request(context=context)).body
    loop = body["guardrail_checks"]["loop"]
    assert (loop["iteration"], loop["elapsed_seconds"], loop["cumulative_cost_usd"]) == values
    assert loop["sources"] == dict(
        zip(("iteration", "elapsed_seconds", "recent_tools", "cost_usd"), sources, strict=True))
    assert (body["cost_estimate"] is None) is (values[2] is None), note
    assert loop["required"] is False
    assert loop["satisfied"] is True


@pytest.mark.parametrize("limit", LIMITS)
def test_any_loop_limit_makes_the_check_required(limit: str) -> None:
    loop = decide(request(constraints=[limit]))
    assert loop.body["guardrail_checks"]["loop"]["required"] is True
    assert loop.body["guardrail_checks"]["loop"]["satisfied"] is True
