"""Run state in the database, per (tenant, run_id), updated inside the decision's transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import ClauseElement, and_, bindparam, select

from stage0.engine.runstate import RECENT_TOOLS_KEPT, RunSnapshot
from stage0.store.database import Store
from stage0.store.schema import run_state
from stage0.store.sql import compiled, one_of, one_of_params, upsert


class RunRow(NamedTuple):
    """A run's ``run_state`` row, as the writer reads it."""

    run_id: str
    iterations: int
    first_seen_us: int
    recent_tools: str
    cost_usd: float


def _select(_: str) -> ClauseElement:
    return select(*(run_state.c[n] for n in RunRow._fields)).where(and_(
        run_state.c.tenant_id == bindparam("t"), run_state.c.run_id == bindparam("r")))


def _select_many(dialect: str, count: int) -> ClauseElement:
    return select(*(run_state.c[n] for n in RunRow._fields)).where(and_(
        run_state.c.tenant_id == bindparam("t"), one_of(dialect, run_state.c.run_id, "r", count)))


def _upsert(dialect: str) -> ClauseElement:
    return upsert(dialect, run_state, {"tenant_id": "t", "run_id": "r", "iterations": "i",
                                       "first_seen_us": "f", "recent_tools": "tools",
                                       "cost_usd": "c", "updated_us": "u"},
                  ["tenant_id", "run_id"], ["iterations", "recent_tools", "cost_usd", "updated_us"])


def _run(row: RunRow, updated_us: int) -> list[Any]:
    """A run as this state keeps it: iterations, first seen, recent tools, cost, updated."""
    return [int(row.iterations), int(row.first_seen_us), orjson.loads(row.recent_tools),
            float(row.cost_usd), updated_us]


def _nothing() -> None:
    """A prefetch with nothing to read."""


class TransactionRunState:
    """A :class:`~stage0.engine.RunState` on the cursor of the current transaction.

    The decision pipeline holds the tenant's write lock for the whole transaction, so the
    read-modify-write below is atomic across threads and server processes. Runs touched by a
    batch are read once, kept in memory for the batch, and written back by :meth:`flush`.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._select = compiled(store.dialect, _select)
        self._upsert = compiled(store.dialect, _upsert)
        self.cursor: Any = None
        self._runs: dict[tuple[str, str], list[Any]] = {}
        self._absent: set[tuple[str, str]] = set()
        """Runs a prefetch found no row for (their first check starts them)."""
        self._changed: set[tuple[str, str]] = set()
        """Runs a check observed in this batch: the ones :meth:`flush` writes."""

    def begin(self, cursor: Any) -> None:
        self.cursor = cursor
        self._runs = {}
        self._absent = set()
        self._changed = set()

    def end(self) -> None:
        self.cursor = None
        self._runs = {}
        self._absent = set()
        self._changed = set()

    def prefetch(self, tenant: str, run_ids: set[str], cur: Any) -> Callable[[], None]:
        """Read several runs of a tenant in one query (``observe`` then needs none). The query
        is sent on ``cur`` and read by the function returned, so that several reads can go to
        PostgreSQL in one pipeline."""
        wanted = [r for r in run_ids if (tenant, r) not in self._runs]
        if not wanted:
            return _nothing
        dialect = self._store.dialect
        cur.execute(compiled(dialect, _select_many, len(wanted)),
                    one_of_params(dialect, "r", wanted, {"t": tenant}))

        def finish() -> None:
            found = {row.run_id: row for row in map(RunRow._make, cur.fetchall())}
            for run_id in wanted:
                row = found.get(run_id)
                if row is None:
                    self._absent.add((tenant, run_id))
                else:
                    self._runs[(tenant, run_id)] = _run(row, 0)

        return finish

    def flush(self) -> None:
        """Write every run this batch changed (one statement for all of them)."""
        changed = [(key, run) for key, run in self._runs.items() if key in self._changed]
        if changed:
            self.cursor.executemany(self._upsert, [
                {"t": t, "r": r, "i": i, "f": f, "tools": orjson.dumps(tools).decode(),
                 "c": c, "u": u}
                for (t, r), (i, f, tools, c, u) in changed
            ])

    def observe(
        self, tenant: str, run_id: str, *, at: datetime, tool: str | None, cost_usd: float
    ) -> RunSnapshot:
        cur = self.cursor
        if cur is None:
            raise RuntimeError("run state used outside a transaction")
        at_us = int(at.timestamp() * 1_000_000)
        run = self._runs.get((tenant, run_id))
        if run is None:
            found = None
            if (tenant, run_id) not in self._absent:
                cur.execute(self._select, {"t": tenant, "r": run_id})
                found = cur.fetchone()
            run = ([0, at_us, [], 0.0, at_us] if found is None
                   else _run(RunRow._make(found), at_us))
            self._runs[(tenant, run_id)] = run
        iterations, first_us, tools, cost, _ = run
        earlier = tuple(tools)
        iterations += 1
        cost += cost_usd
        if tool is not None:
            tools = [*tools, tool][-RECENT_TOOLS_KEPT:]
        run[:] = [iterations, first_us, tools, cost, at_us]
        self._changed.add((tenant, run_id))
        return RunSnapshot(
            iterations, datetime.fromtimestamp(first_us / 1e6, UTC), earlier, cost
        )
