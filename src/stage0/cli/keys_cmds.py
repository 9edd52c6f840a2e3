"""``stage0 keys``: create, list and revoke API keys; rotate the token signing key."""

from __future__ import annotations

import click
import orjson

from stage0.cli.stores import DB_OPTION, open_store
from stage0.store.keys import PLANS, SCOPES, KeyError_, create_key, list_keys, revoke_key
from stage0.store.signing import rotate_signing_key


@click.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@DB_OPTION
@click.option("--tenant", required=True, help="Tenant the key belongs to (created if new).")
@click.option("--name", required=True, help="A name for the key.")
@click.option("--scopes", default="check", show_default=True,
              help=f"Comma-separated scopes: {', '.join(SCOPES)}.")
@click.option("--plan", type=click.Choice(PLANS), default="free", show_default=True)
@click.option("--monthly-quota", type=int, default=None, help="Checks per calendar month (UTC).")
@click.option("--daily-quota", type=int, default=None, help="Checks per day (UTC).")
@click.option("--per-minute", type=int, default=None, help="Checks per minute.")
@click.option("--unlimited", is_flag=True, help="No quotas (overridden by explicit ones).")
@click.option("--principal", default=None, help="The principal (person or service) behind the key.")
@click.option("--roles", default="", help="Comma-separated roles of the principal.")
@click.option("--totp", is_flag=True,
              help="Enrol the principal for approver MFA (RFC 6238); prints the otpauth:// URI.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def keys_create(db: str | None, tenant: str, name: str, scopes: str, plan: str,
                monthly_quota: int | None, daily_quota: int | None, per_minute: int | None,
                unlimited: bool, principal: str | None, roles: str, totp: bool,
                fmt: str) -> None:
    """Create a key and print it once (only its hash is stored)."""
    try:
        with open_store(db) as store:
            record, secret = create_key(
                store, tenant=tenant, name=name,
                scopes=[s.strip() for s in scopes.split(",") if s.strip()], plan=plan,
                monthly_quota=monthly_quota, daily_quota=daily_quota, per_minute=per_minute,
                unlimited=unlimited, principal=principal,
                roles=[r.strip() for r in roles.split(",") if r.strip()], totp=totp,
            )
    except KeyError_ as exc:
        raise click.UsageError(str(exc)) from None
    if fmt == "json":
        click.echo(orjson.dumps({**record.to_public(), "key": secret, "totp_uri": record.totp_uri},
                                option=orjson.OPT_INDENT_2))
        return
    click.echo(f"key      {secret}")
    if record.totp_uri:
        click.echo(f"totp     {record.totp_uri}")
    click.echo(f"id       {record.id}  (tenant {record.tenant_id}, plan {record.plan}, "
               f"scopes {','.join(record.scopes)})")
    click.echo("This is the only time the key is shown; Stage0 keeps only its hash.", err=True)


@keys.command("list")
@DB_OPTION
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def keys_list(db: str | None, tenant: str | None, fmt: str) -> None:
    """List keys (never their secrets)."""
    with open_store(db) as store:
        records = list_keys(store, tenant)
    if fmt == "json":
        click.echo(orjson.dumps([r.to_public() for r in records], option=orjson.OPT_INDENT_2))
        return
    for r in records:
        state = "revoked" if r.revoked_at else "active"
        click.echo(f"{r.id}  {r.tenant_id:12} {r.name:20} {r.prefix}…  {r.plan:4} "
                   f"{','.join(r.scopes):30} {state}")


@keys.command("revoke")
@DB_OPTION
@click.argument("key_id")
def keys_revoke(db: str | None, key_id: str) -> None:
    """Revoke a key by id; it stops working at once, in every server process."""
    try:
        with open_store(db) as store:
            record = revoke_key(store, key_id)
    except KeyError_ as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"revoked {record.id} (tenant {record.tenant_id}, {record.name})")


@keys.command("rotate-signing")
@DB_OPTION
def keys_rotate_signing(db: str | None) -> None:
    """Add a new execution-token signing key; old public keys stay published until their
    tokens have expired."""
    with open_store(db) as store:
        kid, retired = rotate_signing_key(store)
    click.echo(f"signing with {kid}; retired {', '.join(retired) or 'none'} (still published "
               "until their tokens expire)")
