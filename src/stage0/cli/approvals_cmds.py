"""``stage0 approvals``: list, show, approve and reject approval requests; break-glass."""

from __future__ import annotations

import sys
from typing import Any

import click
import orjson

from stage0.cli.stores import DB_OPTION, KEY_OPTION, open_store, tenant_of
from stage0.policy import PolicyError, load_policy
from stage0.store.approval_views import get_approval, list_approvals
from stage0.store.webhooks import deliveries_for


@click.group()
def approvals() -> None:
    """List, show, approve and reject approval requests; declare break-glass."""


@approvals.command("list")
@DB_OPTION
@KEY_OPTION
@click.option("--tenant", default=None, help="Tenant (default: the key's, else `default`).")
@click.option("--status", type=click.Choice(["pending", "approved", "rejected", "expired",
                                             "used"]), default=None)
@click.option("--kind", type=click.Choice(["standard", "break_glass"]), default=None,
              help="Only requests of this kind.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def approvals_list(db: str | None, api_key: str | None, tenant: str | None, status: str | None,
                   kind: str | None, fmt: str) -> None:
    """List approval requests, newest first."""
    import time  # noqa: PLC0415

    with open_store(db) as store:
        items = list_approvals(store, tenant_of(store, api_key, tenant), status,
                               int(time.time() * 1e6), kind=kind)
    if fmt == "json":
        click.echo(orjson.dumps(items, option=orjson.OPT_INDENT_2))
        return
    for a in items:
        click.echo(f"{a['approval_id']}  {a['status']:8} {len(a['approvals'])}/"
                   f"{a['required_approvals']}  {','.join(a['buckets']) or '-':28} "
                   f"{a['action']['goal'][:60]}")


@approvals.command("show")
@DB_OPTION
@KEY_OPTION
@click.option("--tenant", default=None, help="Tenant (default: the key's, else `default`).")
@click.argument("approval_id")
def approvals_show(db: str | None, api_key: str | None, tenant: str | None,
                   approval_id: str) -> None:
    """Show one approval request: the action, who asked, votes, expiry."""
    import time  # noqa: PLC0415

    with open_store(db) as store:
        found = get_approval(store, tenant_of(store, api_key, tenant), approval_id,
                             int(time.time() * 1e6))
        if found is not None:
            found["webhook_deliveries"] = deliveries_for(store, approval_id)
    if found is None:
        raise click.UsageError(f"no approval request `{approval_id}`")
    click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2))


def _decide(db: str | None, api_key: str | None, op: str, payload: dict[str, Any],
            policy_path: str | None) -> None:
    from stage0.engine import system_clock, uuid4_id  # noqa: PLC0415
    from stage0.server.jobs import Job  # noqa: PLC0415
    from stage0.server.writer import Writer  # noqa: PLC0415

    if not api_key:
        raise click.UsageError("--key (or STAGE0_API_KEY) is required: approvers act as the "
                               "principal of their own key")
    from stage0.policy.packset import PackSet, load_pack_set  # noqa: PLC0415

    try:
        packs = load_pack_set(policy_path) if policy_path else PackSet(load_policy(None))
    except PolicyError as exc:
        raise click.ClickException(
            f"the policy pack does not load ({exc}); pass the pack (file or directory) the "
            "server runs with --policy or STAGE0_POLICY") from None
    with open_store(db) as store:
        writer = Writer(store, packs.active, clock=system_clock, ids=uuid4_id,
                        wall_clock=system_clock, held=packs.held)
        try:
            outcome = writer.submit(Job(
                secret=api_key, raw=orjson.dumps(payload), request=None, invalid=None,
                request_id=writer.ids(), client_request_id=False,
                started=0.0, op=op, payload=payload)).result(timeout=60)
        finally:
            writer.close()
    body = outcome.body if isinstance(outcome.body, dict) else orjson.loads(outcome.body)
    click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    if outcome.status != 200:
        sys.exit(1)


def _decision_command(op: str, doc: str) -> None:
    """`approvals approve` and `approvals reject`: the same options, one pipeline path."""

    @approvals.command(op, help=doc)
    @DB_OPTION
    @KEY_OPTION
    @click.option("--reason", default="", help="Why (recorded in the log).")
    @click.option("--totp", default=None,
                  help="The TOTP code, when the request needs approver MFA.")
    @click.option("--policy", "policy_path", envvar="STAGE0_POLICY", default=None,
                  type=click.Path(), help="The pack (file or directory) the server runs.")
    @click.argument("approval_id")
    def command(db: str | None, api_key: str | None, reason: str, totp: str | None,
                policy_path: str | None, approval_id: str) -> None:
        _decide(db, api_key, op, {"approval_id": approval_id, "reason": reason, "totp": totp},
                policy_path)


_decision_command("approve", "Approve as the principal of --key. Exit 1 when refused (the "
                             "reason is printed).")
_decision_command("reject", "Reject as the principal of --key; one rejection ends the request. "
                            "Exit 1 when refused.")


@approvals.command("break-glass")
@DB_OPTION
@KEY_OPTION
@click.option("--reason", required=True,
              help="Why it cannot wait: the incident and its ticket (recorded; required).")
@click.option("--totp", default=None, help="The TOTP code, when the pack's break_glass.mfa is on.")
@click.option("--policy", "policy_path", envvar="STAGE0_POLICY", default=None,
              type=click.Path(),
              help="The pack (file or directory) the server runs: its break_glass settings "
                   "apply. Default: the built-in pack.")
@click.argument("request_id")
def approvals_break_glass(db: str | None, api_key: str | None, reason: str, totp: str | None,
                          policy_path: str | None, request_id: str) -> None:
    """Declare a break-glass approval for decision REQUEST_ID, which a closed change window or a
    freeze held back, as the principal of --key (a role the pack names). The agent retries with
    the printed approval id in `context.approval_id`; it lets that exact action through once,
    never through a DENY rule. Exit 1 when refused."""
    _decide(db, api_key, "break_glass",
            {"request_id": request_id, "reason": reason, "totp": totp}, policy_path)
