"""The Stage0 SDK: clients that fail closed, an in-process engine, and the guard."""

from stage0.sdk.client import (
    AsyncClient,
    CheckResult,
    Client,
    LocalEngine,
    StageZeroError,
    TokenRejected,
)
from stage0.sdk.guard import ActionDeferred, ActionDenied, guard, guarded

__all__ = [
    "ActionDeferred",
    "ActionDenied",
    "AsyncClient",
    "CheckResult",
    "Client",
    "LocalEngine",
    "StageZeroError",
    "TokenRejected",
    "guard",
    "guarded",
]
