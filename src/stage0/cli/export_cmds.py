"""``stage0 export``: where each sink is in each tenant's chain; deliver again from a seq; run
the exporter outside a server."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click

from stage0.cli.stores import DB_OPTION, open_store
from stage0.export import exporter_from_config
from stage0.store import export as outbox

CONFIG_OPTION = click.option(
    "--config", "config_path", envvar=outbox.CONFIG_ENV, default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="The export configuration (YAML). Env: STAGE0_EXPORT_CONFIG.")


@click.group("export")
def export_group() -> None:
    """Decision-log export to NATS JetStream, webhooks and OTLP logs (at least once, in order
    per tenant)."""


def _at(us: int | None) -> str:
    return "-" if not us else datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@export_group.command("status")
@DB_OPTION
@click.option("--sink", default=None, help="Only this sink.")
def export_status(db: str | None, sink: str | None) -> None:
    """Each sink's position in each tenant's chain, its lag, and a failing batch's error."""
    with open_store(db) as store:
        rows = outbox.cursors(store, sink)
    if not rows:
        click.echo("no export cursors yet")
        return
    for c in rows:
        state = (click.style("failing", fg="red") + f" (attempt {c.attempts}, retry at "
                 f"{_at(c.next_attempt_us)}): {c.last_error}" if c.attempts
                 else click.style("ok", fg="green"))
        click.echo(f"{c.sink}  {c.tenant}  seq {c.seq}/{c.head}  lag {c.lag}  "
                   f"delivered {_at(c.delivered_us)}  {state}")


@export_group.command("replay")
@DB_OPTION
@click.option("--sink", required=True, help="The sink (its name in the configuration).")
@click.option("--tenant", required=True, help="The tenant whose rows are delivered again.")
@click.option("--from-seq", "from_seq", type=click.IntRange(min=1), required=True,
              help="Deliver again from this seq on (1: the whole chain).")
def export_replay(db: str | None, sink: str, tenant: str, from_seq: int) -> None:
    """Move a sink's cursor so that the running exporters deliver the tenant's rows again from
    --from-seq (each with its export_id, by which the sink drops what it has)."""
    with open_store(db) as store:
        old = outbox.replay(store, sink, tenant, from_seq)
    click.echo(f"{sink}  {tenant}: cursor moved from seq {old} to {from_seq - 1}; seq "
               f"{from_seq} on will be delivered again")


@export_group.command("run")
@DB_OPTION
@CONFIG_OPTION
@click.option("--once", is_flag=True, help="One pass, then exit (status 1 if a batch failed).")
def export_run(db: str | None, config_path: str | None, once: bool) -> None:
    """Run the exporter in the foreground (what every server process does with
    STAGE0_EXPORT_CONFIG), until interrupted."""
    if config_path is None:
        raise click.UsageError("pass --config or set STAGE0_EXPORT_CONFIG")
    try:
        config = outbox.load_config(config_path)
    except outbox.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    with open_store(db) as store:
        try:
            exporter = exporter_from_config(store, config)
        except outbox.ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            if once:
                sent = exporter.run_once()
                failing = [c for c in outbox.cursors(store) if c.attempts]
                click.echo(f"{sent} records delivered")
                for c in failing:
                    click.echo(f"  {c.sink}  {c.tenant}: {c.last_error}", err=True)
                if failing:
                    raise SystemExit(1)
                return
            while True:
                if not exporter.run_once():
                    time.sleep(config.interval_s)
        except KeyboardInterrupt:
            pass
        finally:
            exporter.close()
