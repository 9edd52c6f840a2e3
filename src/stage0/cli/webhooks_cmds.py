"""``stage0 webhooks``: signed webhooks on approval events."""

from __future__ import annotations

import click
import orjson

from stage0.cli.stores import DB_OPTION, open_store
from stage0.store.webhooks import EVENTS, add_webhook, list_webhooks, remove_webhook


@click.group("webhooks")
def webhooks_group() -> None:
    """Webhooks on approval events (signed with HMAC-SHA256, retried with backoff)."""


@webhooks_group.command("add")
@DB_OPTION
@click.option("--tenant", required=True, help="Tenant whose approval events are sent.")
@click.option("--url", required=True, help="The receiver (http:// or https://).")
@click.option("--events", default=",".join(EVENTS), show_default=True,
              help="Comma-separated events.")
def webhooks_add(db: str | None, tenant: str, url: str, events: str) -> None:
    """Add a webhook and print its signing secret once."""
    with open_store(db) as store:
        try:
            hook_id, secret = add_webhook(store, tenant, url,
                                          [e.strip() for e in events.split(",") if e.strip()])
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(f"webhook  {hook_id}")
    click.echo(f"secret   {secret}")
    click.echo("Verify Stage0-Signature with this secret; it is shown only once.", err=True)


@webhooks_group.command("list")
@DB_OPTION
@click.option("--tenant", default=None, help="Only this tenant's webhooks.")
def webhooks_list(db: str | None, tenant: str | None) -> None:
    """List webhooks (never their secrets)."""
    with open_store(db) as store:
        hooks = list_webhooks(store, tenant)
    click.echo(orjson.dumps(hooks, option=orjson.OPT_INDENT_2))


@webhooks_group.command("remove")
@DB_OPTION
@click.argument("webhook_id")
def webhooks_remove(db: str | None, webhook_id: str) -> None:
    """Stop sending to a webhook."""
    with open_store(db) as store:
        if not remove_webhook(store, webhook_id):
            raise click.UsageError(f"no active webhook `{webhook_id}`")
    click.echo(f"removed {webhook_id}")
