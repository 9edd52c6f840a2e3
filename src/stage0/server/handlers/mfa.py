"""Approvers' second factor: a TOTP code per approval (each code once), and a lockout after
repeated wrong codes. TOTP runs on the real clock (``Writer.wall_clock``), even when the
decisions' clock is frozen."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from stage0.server.handlers.common import Refuse
from stage0.server.jobs import Outcome
from stage0.store.keys import ApiKey
from stage0.store.statements import MfaRow, mfa_read, mfa_write
from stage0.store.transaction import Transaction

if TYPE_CHECKING:
    from stage0.server.writer import Writer

MFA_MAX_FAILURES = 5
MFA_LOCKOUT_S = 900


def check(writer: Writer, tx: Transaction, key: ApiKey, p: dict[str, Any],
          refuse: Refuse) -> Outcome | None:
    """Check the TOTP code in ``p`` for ``key`` (replay-protected, locked out after repeated
    failures); ``None`` when it passes, else the refusal."""
    if key.totp_secret is None:
        return refuse(403, "APPROVER_MFA_NOT_ENROLLED",
                      "This request needs approver MFA and the key has no TOTP enrolled")
    real_us = int(writer.wall_clock().timestamp() * 1e6)
    key = _current(tx, key)
    if key.mfa_locked_until_us is not None and key.mfa_locked_until_us > real_us:
        wait = max(1, (key.mfa_locked_until_us - real_us) // 1_000_000)
        return refuse(429, "APPROVER_MFA_LOCKED",
                      "Too many wrong TOTP codes; approving is locked for this key",
                      retry_after_seconds=int(wait))
    if not p.get("totp"):
        return refuse(401, "APPROVER_MFA_REQUIRED", "This request needs a TOTP code")
    step = key.totp_step(str(p["totp"]), real_us / 1e6)
    if step is None or (key.totp_last_step is not None and step <= key.totp_last_step):
        _failed(tx, key, real_us)
        return refuse(403, "APPROVER_MFA_INVALID",
                      "The TOTP code is not valid (or was already used)")
    _write(tx, key, MfaRow(0, None, step))
    return None


def _current(tx: Transaction, key: ApiKey) -> ApiKey:
    """The key with its MFA counters as they are now in this transaction."""
    row = tx.fetch_one(mfa_read, {"k": key.id})
    if row is None:
        return key
    now = MfaRow._make(row)
    return replace(key, mfa_failures=int(now.mfa_failures or 0),
                   mfa_locked_until_us=now.mfa_locked_until_us,
                   totp_last_step=now.totp_last_step)


def _failed(tx: Transaction, key: ApiKey, real_us: int) -> None:
    failures = key.mfa_failures + 1
    locked = real_us + MFA_LOCKOUT_S * 1_000_000 if failures >= MFA_MAX_FAILURES else None
    _write(tx, key, MfaRow(0 if locked else failures, locked, key.totp_last_step))


def _write(tx: Transaction, key: ApiKey, row: MfaRow) -> None:
    tx.cursor.execute(tx.sql(mfa_write), {**row._asdict(), "k": key.id})
