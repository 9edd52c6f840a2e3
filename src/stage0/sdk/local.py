"""The SDK's typed ``check`` in process, without a server."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from stage0.contract import RequestValidationError
from stage0.engine import Engine, InMemoryRunState
from stage0.policy import CompiledPolicy, load_policy
from stage0.sdk.results import CheckResult, request_body


class LocalEngine:
    """The same typed ``check`` in process (tests, offline use): no store, approvals or tokens.

    Invalid requests come back as a DENY result naming the bad fields, as over HTTP (422).
    """

    def __init__(self, policy: CompiledPolicy | str | None = None, *,
                 engine: Engine | None = None) -> None:
        if engine is None:
            compiled = policy if isinstance(policy, CompiledPolicy) else load_policy(policy)
            engine = Engine(compiled, run_state=InMemoryRunState())
        self.engine = engine

    def check(self, goal: str | Mapping[str, Any], *, request_id: str | None = None,
              **fields: Any) -> CheckResult:
        body = request_body(goal, **fields)
        try:
            decision = self.engine.check(body, request_id=request_id or str(uuid.uuid4()))
        except RequestValidationError as exc:
            return CheckResult({**exc.to_dict(), "verdict": "DENY", "decision": "NO_GO",
                                "request_id": request_id}, 422)
        return CheckResult(decision.body, 200)
