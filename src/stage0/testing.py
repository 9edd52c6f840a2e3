"""Helpers for testing code that calls Stage0: a fixed clock, fixed ids, in-memory stores.

    from stage0.testing import FixedClock, SequentialIds, make_engine
    engine = make_engine(at="2026-03-17T10:00:00Z")
    assert engine.check(request).verdict == "DEFER"
"""

from __future__ import annotations

from datetime import datetime, timedelta

from stage0.contract.request import parse_instant
from stage0.engine import Engine, InMemoryRunState
from stage0.engine.approvals import ApprovalEvidence
from stage0.policy import CompiledPolicy, load_policy


class FixedClock:
    """A clock that says ``at`` until moved with :meth:`advance` or :meth:`set`."""

    def __init__(self, at: datetime | str = "2026-01-01T00:00:00Z") -> None:
        self.now = parse_instant(at) if isinstance(at, str) else at

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now = self.now + timedelta(seconds=seconds)

    def set(self, at: datetime | str) -> None:
        self.now = parse_instant(at) if isinstance(at, str) else at


class SequentialIds:
    """Ids ``00000000-0000-4000-8000-000000000001``, ``...002`` and so on: valid UUIDs."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"00000000-0000-4000-8000-{self.count:012d}"


class StaticApprovals:
    """An approval resolver backed by a dict, keyed by ``(tenant, approval_id)``."""

    def __init__(self, approvals: dict[tuple[str, str], ApprovalEvidence] | None = None) -> None:
        self.approvals = dict(approvals or {})

    def add(self, evidence: ApprovalEvidence, tenant: str = "default") -> None:
        self.approvals[(tenant, evidence.approval_id)] = evidence

    def resolve(self, tenant: str, approval_id: str) -> ApprovalEvidence | None:
        return self.approvals.get((tenant, approval_id))


def make_engine(
    at: datetime | str = "2026-01-01T00:00:00Z",
    policy: CompiledPolicy | None = None,
    approvals: StaticApprovals | None = None,
) -> Engine:
    """An engine with the default pack (or ``policy``), a fixed clock, fixed ids, fresh state."""
    return Engine(
        policy if policy is not None else load_policy(),
        run_state=InMemoryRunState(),
        approvals=approvals,
        clock=FixedClock(at),
        ids=SequentialIds(),
    )


__all__ = [
    "FixedClock",
    "InMemoryRunState",
    "SequentialIds",
    "StaticApprovals",
    "make_engine",
    "parse_instant",
]
