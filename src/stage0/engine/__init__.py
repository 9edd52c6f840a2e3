"""Evaluation: facts, checks, loops, approvals and the combining rule. Knows no I/O."""

from stage0.contract.response import Decision
from stage0.engine.approvals import ApprovalEvidence, ApprovalResolver
from stage0.engine.evaluate import Engine, system_clock, uuid4_id
from stage0.engine.runstate import InMemoryRunState, RunSnapshot, RunState

__all__ = [
    "ApprovalEvidence",
    "ApprovalResolver",
    "Decision",
    "Engine",
    "InMemoryRunState",
    "RunSnapshot",
    "RunState",
    "system_clock",
    "uuid4_id",
]
