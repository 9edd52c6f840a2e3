"""Run state in the database, per (tenant, run_id), updated inside the decision's transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from stage0.engine.runstate import RECENT_TOOLS_KEPT, RunSnapshot
from stage0.store.database import Store

SELECT = (
    "SELECT iterations, first_seen_us, recent_tools, cost_usd FROM run_state "
    "WHERE tenant_id = :t AND run_id = :r"
)
UPSERT = (
    "INSERT INTO run_state (tenant_id, run_id, iterations, first_seen_us, recent_tools, "
    "cost_usd, updated_us) VALUES (:t, :r, :i, :f, :tools, :c, :u) "
    "ON CONFLICT (tenant_id, run_id) DO UPDATE SET iterations = excluded.iterations, "
    "recent_tools = excluded.recent_tools, cost_usd = excluded.cost_usd, "
    "updated_us = excluded.updated_us"
)


class TransactionRunState:
    """A :class:`~stage0.engine.RunState` on the cursor of the current transaction.

    The decision pipeline holds the tenant's write lock for the whole transaction, so the
    read-modify-write below is atomic across threads and server processes.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._select = store.sql(SELECT)
        self._upsert = store.sql(UPSERT)
        self.cursor: Any = None

    def observe(
        self, tenant: str, run_id: str, *, at: datetime, tool: str | None, cost_usd: float
    ) -> RunSnapshot:
        cur = self.cursor
        if cur is None:
            raise RuntimeError("run state used outside a transaction")
        at_us = int(at.timestamp() * 1_000_000)
        cur.execute(self._select, {"t": tenant, "r": run_id})
        row = cur.fetchone()
        if row is None:
            iterations, first_us, tools, cost = 0, at_us, [], 0.0
        else:
            iterations, first_us, tools, cost = (
                int(row[0]), int(row[1]), orjson.loads(row[2]), float(row[3])
            )
        earlier = tuple(tools)
        iterations += 1
        cost += cost_usd
        if tool is not None:
            tools = [*tools, tool][-RECENT_TOOLS_KEPT:]
        cur.execute(
            self._upsert,
            {"t": tenant, "r": run_id, "i": iterations, "f": first_us,
             "tools": orjson.dumps(tools).decode(), "c": cost, "u": at_us},
        )
        return RunSnapshot(
            iterations, datetime.fromtimestamp(first_us / 1e6, UTC), earlier, cost
        )
