"""What the HTTP layer hands the decision writer, and what it gets back: a :class:`Job` (one
``/check``, approval vote, break-glass declaration or token consumption), its :class:`Outcome`,
and the one error shape."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from stage0.contract import CODES, CheckRequest, RequestValidationError
from stage0.contract.response import Decision
from stage0.store.keys import ApiKey
from stage0.store.redact import redact

if TYPE_CHECKING:
    from stage0.server.tracing import Trace


@dataclass(slots=True)
class Outcome:
    status: int
    body: dict[str, Any] | bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class EarlyDecision:
    """A decision made before the writer took the lock, for the tenant it expected."""

    tenant: str
    now: datetime
    decision: Decision
    eval_us: float
    token: str | None = None


@dataclass(slots=True)
class Job:
    secret: str
    raw: bytes
    request: CheckRequest | None
    invalid: RequestValidationError | None
    request_id: str
    client_request_id: bool
    started: float
    op: str = "check"
    """``check``, ``approve``, ``reject``, ``break_glass`` or ``consume``."""
    payload: dict[str, Any] = field(default_factory=dict)
    key_id: str | None = None
    """An already-authenticated key (the console's signed-in session), looked up by id in
    place of ``secret``; a revoked key still fails."""
    future: Future[Outcome] = field(default_factory=Future)
    key: ApiKey | None = None
    parse_us: float = 0.0
    secret_hash: str | None = None
    digest: str | None = None
    """The action digest, when worked out ahead of the transaction (for the prefetch)."""
    early: EarlyDecision | None = None
    """The decision made ahead of the transaction, when it needs no stored state."""
    trace: Trace | None = None
    """#16: the caller's trace context, when tracing is on (``server/tracing.py``)."""

    def logged_request(self) -> tuple[str, str]:
        """What the log keeps of the body: its redacted JSON and the masked paths (JSON).
        The HTTP handler computes it before queueing, outside the writer's lock."""
        if self._logged is None:
            try:
                request_obj = orjson.loads(self.raw)
            except orjson.JSONDecodeError:  # nothing to redact by key: keep no text of it
                request_obj = {"_unparsed": {"sha256": self.input_sha256,
                                             "bytes": len(self.raw)}}
            redacted, masked = redact(request_obj)
            self._logged = (orjson.dumps(redacted).decode(), orjson.dumps(masked).decode())
        return self._logged

    @property
    def input_sha256(self) -> str:
        """SHA-256 of the body as received (computed once per job)."""
        if self._input_sha256 is None:
            self._input_sha256 = hashlib.sha256(self.raw).hexdigest()
        return self._input_sha256

    _input_sha256: str | None = None
    _logged: tuple[str, str] | None = None


def job_ident(job: Job) -> str:
    """What identifies ``job``'s key within a batch: its secret, or the console's key id."""
    return job.secret if job.key_id is None else "\0" + job.key_id


def error_body(status: int, detail: str, request_id: str, **extra: Any) -> dict[str, Any]:
    """The one error shape: ``{"detail", "request_id", ...}`` (CONTRACT section 8)."""
    return {"detail": detail, "request_id": request_id, **extra}


def fail_closed_body(request_id: str, detail: str, policy_version: str) -> dict[str, Any]:
    issue = CODES["POLICY_EVALUATION_FAILED"].issue(detail)
    return error_body(
        503, detail, request_id, code="FAIL_CLOSED", verdict="DENY", decision="ERROR",
        issues=[issue.to_dict()], policy_version=policy_version,
    )
