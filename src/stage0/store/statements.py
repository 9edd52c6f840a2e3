"""The decision writer's statements, against the tables (compiled once per dialect by
:func:`stage0.store.sql.compiled`), and the typed rows they return.

Each builder takes the dialect; a builder of a list condition also takes the list's length
(pass it as the ``variant`` of :func:`~stage0.store.sql.compiled`). Rows are read by name:
through the :class:`~typing.NamedTuple` of their statement, or :data:`KEY_COLUMNS`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Select,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
)

from stage0.store.schema import (
    api_keys,
    approval_votes,
    approvals,
    decisions,
    key_usage,
    token_uses,
)
from stage0.store.sql import insert, names, one_of, upsert

# -- keys ----------------------------------------------------------------------------------------

_KEY = [c for c in api_keys.c if c.name != "key_hash"]


def key_by_hash(_: str) -> ClauseElement:
    return select(*_KEY).where(api_keys.c.key_hash == bindparam("h"))


def key_by_id(_: str) -> ClauseElement:
    return select(*_KEY).where(api_keys.c.id == bindparam("i"))


KEY_COLUMNS = names(key_by_hash)
"""The columns of a key row, as :meth:`stage0.store.keys.ApiKey.from_row` reads them."""


def key_principal(_: str) -> ClauseElement:
    return select(api_keys.c.principal).where(api_keys.c.id == bindparam("k"))


class MfaRow(NamedTuple):
    mfa_failures: int | None
    mfa_locked_until_us: int | None
    totp_last_step: int | None


def mfa_read(_: str) -> ClauseElement:
    return select(*(api_keys.c[n] for n in MfaRow._fields)).where(api_keys.c.id == bindparam("k"))


def mfa_write(_: str) -> ClauseElement:
    return api_keys.update().where(api_keys.c.id == bindparam("k")).values(
        {n: bindparam(n) for n in MfaRow._fields})


# -- usage ---------------------------------------------------------------------------------------


class UsageRow(NamedTuple):
    """A key's ``key_usage`` row."""

    key_id: str
    month_key: str
    month_count: int
    day_key: str
    day_count: int
    minute_key: str
    minute_count: int


def usage_one(_: str) -> ClauseElement:
    return select(*(key_usage.c[n] for n in UsageRow._fields)).where(
        key_usage.c.key_id == bindparam("k"))


def usage_many(dialect: str, count: int) -> ClauseElement:
    return select(*(key_usage.c[n] for n in UsageRow._fields)).where(
        one_of(dialect, key_usage.c.key_id, "k", count))


def usage_upsert(dialect: str) -> ClauseElement:
    return upsert(dialect, key_usage, {n: n for n in UsageRow._fields}, ["key_id"],
                  UsageRow._fields[1:])


# -- earlier answers -----------------------------------------------------------------------------


class Answer(NamedTuple):
    """What a request id was answered: the body's hash, the response, the status."""

    input_sha256: str
    response: str
    http_status: int
    request_id: str


_ANSWER = [decisions.c[n] for n in Answer._fields]


def answer_one(_: str) -> ClauseElement:
    return select(*_ANSWER).where(and_(decisions.c.tenant_id == bindparam("t"),
                                       decisions.c.request_id == bindparam("r")))


def answers_many(dialect: str, count: int) -> ClauseElement:
    return select(*_ANSWER).where(and_(decisions.c.tenant_id == bindparam("t"),
                                       one_of(dialect, decisions.c.request_id, "r", count)))


class LoggedDecision(NamedTuple):
    """A logged ``/check`` decision, as break-glass reads it."""

    action_digest: str
    key_id: str
    request: str
    response: str
    environment: str | None
    buckets: str
    tools: str
    policy_version: str


def logged_decision(_: str) -> ClauseElement:
    return select(*(decisions.c[n] for n in LoggedDecision._fields)).where(and_(
        decisions.c.tenant_id == bindparam("t"), decisions.c.request_id == bindparam("r"),
        decisions.c.kind == literal_column("'decision'")))


# -- approvals, tokens, locks --------------------------------------------------------------------

APPROVAL_COLUMNS = tuple(c.name for c in approvals.c)
"""An approval row's columns, in the order the writer's statements read them."""
VOTE_COLUMNS = ("principal", "key_id", "decision", "reason", "mfa", "created_us")


def _approval_rows() -> Select[Any]:
    return select(*approvals.c)


def approval_one(dialect: str) -> ClauseElement:
    return _approval_rows().where(and_(approvals.c.tenant_id == bindparam("t"),
                                     approvals.c.id == bindparam("i")))


def _still_open() -> ColumnElement[bool]:
    """Still open: pending and unexpired, or granted and within its execute-by window (the
    same rule as :func:`is_open`)."""
    return or_(and_(approvals.c.status == literal_column("'pending'"),
                    approvals.c.expires_us > bindparam("now")),
               and_(approvals.c.status == literal_column("'approved'"),
                    approvals.c.execute_by_us > bindparam("now")))


def approval_open(dialect: str) -> ClauseElement:
    """The open requests of one action with these bound fields, newest first: one per
    requester (``ApprovalStore.open_for`` picks the caller's)."""
    return _approval_rows().where(and_(
        approvals.c.tenant_id == bindparam("t"), approvals.c.action_digest == bindparam("d"),
        approvals.c.binding_digest == bindparam("b"),
        _still_open())).order_by(approvals.c.created_us.desc()).limit(
        literal_column("1000")).offset(literal_column("0"))


def approvals_open_many(dialect: str, count: int) -> ClauseElement:
    return _approval_rows().where(and_(
        approvals.c.tenant_id == bindparam("t"),
        one_of(dialect, approvals.c.action_digest, "d", count),
        _still_open())).order_by(approvals.c.created_us.desc())


def approval_insert(_: str) -> ClauseElement:
    return insert(approvals).values({c: bindparam(c) for c in APPROVAL_COLUMNS})


def approval_update(_: str) -> ClauseElement:
    return approvals.update().where(approvals.c.id == bindparam("i")).values(
        status=bindparam("status"), approvals_count=bindparam("n"),
        decided_us=bindparam("decided"), execute_by_us=bindparam("execute_by"),
        used_us=bindparam("used"), used_by_request=bindparam("used_by"))


def approval_count(_: str) -> ClauseElement:
    return approvals.update().where(approvals.c.id == bindparam("i")).values(
        approvals_count=bindparam("n"))


def vote_insert(_: str) -> ClauseElement:
    c = approval_votes.c
    return insert(approval_votes).values({
        c.approval_id: bindparam("a"), c.tenant_id: bindparam("t"), c.key_id: bindparam("k"),
        c.principal: bindparam("p"), c.decision: bindparam("d"), c.reason: bindparam("r"),
        c.mfa: bindparam("m"), c.created_us: bindparam("c")})


def votes_of(_: str) -> ClauseElement:
    return select(*(approval_votes.c[n] for n in VOTE_COLUMNS)).where(
        approval_votes.c.approval_id == bindparam("a")).order_by(approval_votes.c.id)


def expired_approvals(_: str) -> ClauseElement:
    return select(approvals.c.id).where(and_(
        approvals.c.tenant_id == bindparam("t"),
        approvals.c.status == literal_column("'pending'"),
        approvals.c.expires_us <= bindparam("now"))).order_by(
        approvals.c.created_us).limit(literal_column("100")).offset(literal_column("0"))


class GlassRow(NamedTuple):
    """A break-glass declaration for a logged decision."""

    id: str
    status: str
    expires_us: int
    execute_by_us: int | None


def glass_for(_: str) -> ClauseElement:
    return select(*(approvals.c[n] for n in GlassRow._fields)).where(and_(
        approvals.c.tenant_id == bindparam("t"), approvals.c.request_id == bindparam("r"),
        approvals.c.kind == literal_column("'break_glass'")))


def expiring_tenants(_: str) -> ClauseElement:
    return select(approvals.c.tenant_id).distinct().where(and_(
        approvals.c.status == literal_column("'pending'"),
        approvals.c.expires_us <= bindparam("now")))


def warning_tenants(_: str) -> ClauseElement:
    """Tenants with a pending request that expires within the warning horizon, unwarned."""
    return select(approvals.c.tenant_id).distinct().where(_to_warn())


def _to_warn() -> Any:
    """Pending, unwarned, expiring within the horizon — and living longer than the warning
    window (a request that short would be "expiring" from its first sweep on)."""
    return and_(approvals.c.status == literal_column("'pending'"),
                approvals.c.warned_us.is_(None),
                approvals.c.expires_us > bindparam("now"),
                approvals.c.expires_us <= bindparam("horizon"),
                approvals.c.expires_us - approvals.c.created_us > bindparam("window"))


def approvals_to_warn(_: str) -> ClauseElement:
    return select(approvals.c.id).where(and_(
        approvals.c.tenant_id == bindparam("t"), _to_warn())).order_by(
        approvals.c.expires_us).limit(literal_column("100")).offset(literal_column("0"))


def approval_warned(_: str) -> ClauseElement:
    return approvals.update().where(approvals.c.id == bindparam("i")).values(
        warned_us=bindparam("w"))


def token_used(_: str) -> ClauseElement:
    return select(literal_column("1")).where(and_(
        token_uses.c.tenant_id == bindparam("t"), token_uses.c.jti == bindparam("j")))


def token_use(_: str) -> ClauseElement:
    return insert(token_uses).values({c.name: bindparam(c.name) for c in token_uses.c})


def tenant_lock(_: str) -> ClauseElement:
    """PostgreSQL: the tenant's advisory lock, held until the transaction ends."""
    return select(func.pg_advisory_xact_lock(func.hashtext(bindparam("t"))))
