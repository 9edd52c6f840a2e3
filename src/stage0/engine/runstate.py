"""Run state for loop protection, kept per tenant and ``run_id`` (CONTRACT section 5, Loops)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

RECENT_TOOLS_KEPT = 50


@dataclass(slots=True)
class RunSnapshot:
    """A run as seen by the server, this check included. Read-only by convention (not
    ``frozen``: that costs an ``object.__setattr__`` per field on every check of a run)."""

    iterations: int
    """Checks seen for the run, this one included."""
    first_seen: datetime
    recent_tools: tuple[str, ...]
    """Tools of the run's earlier checks, oldest first (this check's tool excluded)."""
    cost_usd: float
    """Sum of the step costs (``context.cost_usd``) reported for the run, this one included."""


class RunState(Protocol):
    """Records one check of a run and returns the run as it now stands, atomically."""

    def observe(
        self, tenant: str, run_id: str, *, at: datetime, tool: str | None, cost_usd: float
    ) -> RunSnapshot: ...


@dataclass(slots=True)
class _Run:
    iterations: int
    first_seen: datetime
    tools: tuple[str, ...]
    """The last :data:`RECENT_TOOLS_KEPT` tools, oldest first (a tuple: the snapshot shares it)."""
    cost_usd: float


class InMemoryRunState:
    """Process-local run state; the service backs :class:`RunState` with its database."""

    def __init__(self, max_runs: int = 100_000) -> None:
        self._runs: dict[tuple[str, str], _Run] = {}
        self._lock = threading.Lock()
        self._max_runs = max_runs

    def observe(
        self, tenant: str, run_id: str, *, at: datetime, tool: str | None, cost_usd: float
    ) -> RunSnapshot:
        key = (tenant, run_id)
        with self._lock:
            run = self._runs.get(key)
            if run is None:
                if len(self._runs) >= self._max_runs:
                    self._runs.pop(next(iter(self._runs)))  # evict the oldest run
                run = _Run(0, at, (), 0.0)
                self._runs[key] = run
            earlier = run.tools
            run.iterations += 1
            run.cost_usd += cost_usd
            if tool is not None:
                run.tools = (earlier[1:] if len(earlier) >= RECENT_TOOLS_KEPT else earlier) + (
                    tool,)
            return RunSnapshot(run.iterations, run.first_seen, earlier, run.cost_usd)
