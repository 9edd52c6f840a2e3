"""What the decision writer does with each job, by operation (``Writer``'s ``HANDLERS``):
:mod:`checks` (``/check``), :mod:`votes` (approve, reject), :mod:`break_glass`, :mod:`tokens`
(consuming an execution token, and signing one), :mod:`sweep` (expiring approvals); with
:mod:`mfa` (approvers' TOTP and lockout) and :mod:`early` (checks decided before the lock).

A handler runs inside the batch's transaction and returns the job's answer; what it writes goes
through the :class:`~stage0.store.transaction.Transaction` (written back before the commit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from stage0.server.jobs import Job, Outcome
from stage0.store.transaction import Transaction

if TYPE_CHECKING:
    from stage0.server.writer import Writer

Handler: TypeAlias = "Callable[[Writer, Transaction, Job], Outcome]"
