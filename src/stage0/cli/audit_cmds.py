"""``stage0 audit``: verify, checkpoint and export the hash-chained decision log; break-glass
review."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from stage0.cli.stores import DB_OPTION, open_store, option_instant
from stage0.store import checkpoints, ledger


@click.group()
def audit() -> None:
    """Verify and export the hash-chained decision log."""


@audit.command("verify")
@DB_OPTION
@click.option("--tenant", default=None, help="Only this tenant's chain.")
@click.option("--witness", "witness", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="A witness file of signed checkpoints (JSON lines, as `stage0 audit "
                   "checkpoint --witness` writes); repeatable.")
@click.option("--jwks", "jwks", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Check checkpoint signatures with this JWKS's keys only (kept outside the "
                   "database), not the store's; repeatable.")
def audit_verify(db: str | None, tenant: str | None, witness: tuple[str, ...],
                 jwks: tuple[str, ...]) -> None:
    """Recompute every chain; name each modified, inserted or deleted row; check it against
    every signed checkpoint (stored, and in the witness files), naming rows deleted or
    rewritten since one. Exit 1 if any."""
    with open_store(db) as store:
        try:
            reports = checkpoints.verify(store, tenant, witness=witness, jwks=jwks)
        except checkpoints.CheckpointError as exc:
            raise click.ClickException(str(exc)) from None
    broken = 0
    for report in reports:
        mark = click.style("ok", fg="green") if report.ok else click.style("BROKEN", fg="red")
        anchored = (f" ({report.anchors} checkpoint{'s' if report.anchors > 1 else ''}, "
                    f"newest at seq {report.anchored_seq})" if report.anchors else "")
        pruned = (f"; seq 1..{report.pruned_to} pruned at a signed partition boundary"
                  if report.pruned_to else "")
        click.echo(f"{report.tenant}: {report.rows} rows {mark}{anchored}{pruned}")
        for problem in report.problems:
            click.echo(f"  - {problem}")
        broken += not report.ok
    if not reports:
        click.echo("no decisions logged yet")
    sys.exit(1 if broken else 0)


@audit.command("checkpoint")
@DB_OPTION
@click.option("--tenant", default=None, help="Only this tenant's chain.")
@click.option("--witness", default=None, type=click.Path(dir_okay=False, writable=True),
              help="Append the checkpoints to this file (JSON lines), kept outside the "
                   "database.")
def audit_checkpoint(db: str | None, tenant: str | None, witness: str | None) -> None:
    """Sign a checkpoint at each chain's head with the server's key, store it, and print it
    as a JSON line (also appended to --witness)."""
    from stage0.store.signing import Keyring, ensure_signing_key  # noqa: PLC0415

    with open_store(db) as store:
        ensure_signing_key(store)
        made = checkpoints.checkpoint_heads(store, Keyring(store), tenant)
    if witness is not None and made:
        checkpoints.append_witness(witness, made)
    for checkpoint in made:
        click.echo(orjson.dumps(checkpoint.witness_line()))
    if not made:
        click.echo("no decisions logged yet", err=True)


@audit.command("export")
@DB_OPTION
@click.option("--tenant", default=None, help="Only this tenant.")
@click.option("--since", default=None, help="ISO-8601: records at or after.")
@click.option("--until", default=None, help="ISO-8601: records before.")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default="-",
              help="File to write (default: standard output).")
def audit_export(db: str | None, tenant: str | None, since: str | None, until: str | None,
                 fmt: str, output: str) -> None:
    """Stream log records as JSON lines, oldest first, with a progress bar on stderr."""
    from tqdm import tqdm  # noqa: PLC0415 - only this command needs it

    since_at, until_at = option_instant(since, "--since"), option_instant(until, "--until")
    with open_store(db) as store:
        total = ledger.count(store, tenant)
        out: Any = sys.stdout.buffer if output == "-" else Path(output).open("wb")  # noqa: SIM115
        try:
            with tqdm(total=total, unit="rec", file=sys.stderr, disable=None) as bar:
                for record in ledger.export(store, tenant=tenant, since=since_at, until=until_at):
                    out.write(orjson.dumps(record) + b"\n")
                    bar.update(1)
        finally:
            if out is not sys.stdout.buffer:
                out.close()


@audit.command("prune")
@DB_OPTION
@click.option("--before", "before", required=True,
              help="ISO-8601 date: remove the months that end at or before it.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; change nothing.")
@click.option("--ignore-export", is_flag=True,
              help="Prune rows an export sink has not acknowledged yet (they are lost to it).")
def audit_prune(db: str | None, before: str, dry_run: bool, ignore_export: bool) -> None:
    """Retention: sign a checkpoint at each tenant's boundary (reason partition), then drop
    the decision log's monthly partitions that end at or before --before (PostgreSQL; on
    SQLite, delete those months' rows). `stage0 audit verify` then checks the rest of each
    chain from its signed boundary."""
    from stage0.store.retention import LogChanged, NotExported, prune  # noqa: PLC0415
    from stage0.store.signing import Keyring, TokenError, ensure_signing_key  # noqa: PLC0415

    at = option_instant(before, "--before")
    assert at is not None  # required
    with open_store(db) as store:
        ensure_signing_key(store)
        try:
            report = prune(store, Keyring(store), at, dry_run=dry_run,
                           ignore_export=ignore_export)
        except (TokenError, NotExported, LogChanged) as exc:
            raise click.ClickException(str(exc)) from None
    if not report.partitions:
        click.echo("nothing to prune")
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {', '.join(report.partitions)}: {report.rows} rows")
    for tenant, seq in sorted(report.boundaries.items()):
        click.echo(f"  {tenant}: seq 1..{seq} (boundary checkpoint "
                   f"{'to sign' if dry_run else 'signed'} at seq {seq})")
    if report.kept:
        click.echo(f"  {report.kept} rows of those months chained after kept rows "
                   f"{'would be' if dry_run else 'were'} kept")


@audit.command("break-glass")
@DB_OPTION
@click.option("--tenant", default=None, help="Only this tenant (default: every tenant).")
@click.option("--since", default=None, help="ISO-8601: declarations at or after.")
@click.option("--until", default=None, help="ISO-8601: declarations before.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def audit_break_glass(db: str | None, tenant: str | None, since: str | None,
                      until: str | None, fmt: str) -> None:
    """List break-glass declarations for post-incident review: who, when, why, what it let
    through, and the decision that used it."""
    import time  # noqa: PLC0415

    from stage0.store.approval_views import break_glass_report  # noqa: PLC0415

    since_at, until_at = option_instant(since, "--since"), option_instant(until, "--until")
    with open_store(db) as store:
        items = break_glass_report(
            store, tenant, int(time.time() * 1e6),
            since_us=int(since_at.timestamp() * 1e6) if since_at else None,
            until_us=int(until_at.timestamp() * 1e6) if until_at else None)
    if fmt == "json":
        click.echo(orjson.dumps(items, option=orjson.OPT_INDENT_2))
        return
    if not items:
        click.echo("no break-glass declarations")
        return
    for b in items:
        used = b["used_by"]
        outcome = (f"used by {used['request_id']} ({used.get('verdict', '?')})" if used
                   else f"{b['status']} (usable until {b['usable_until']})")
        held = b["declared_for"] or {}
        click.echo(f"{b['declared_at']}  {b['approval_id']}  {b['tenant_id']}  "
                   f"by {b['declared_by']}{' (MFA)' if b['mfa'] else ''}")
        click.echo(f"  action: {', '.join(b['action'].get('tools') or []) or '-'} "
                   f"[{', '.join(b['buckets']) or '-'}] in {b['environment'] or '-'}")
        click.echo(f"  held by: {', '.join(held.get('issues') or []) or '-'} "
                   f"(decision {held.get('request_id')})")
        click.echo(f"  reason: {b['reason']}")
        click.echo(f"  outcome: {outcome}")
