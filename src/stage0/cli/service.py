"""Store-backed commands: ``serve``, ``keys``, ``audit``. Each takes ``--db`` (or
``STAGE0_DATABASE_URL``); the default store is the SQLite file ``./stage0.db``."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson
from sqlalchemy import make_url

from stage0.contract.request import parse_instant
from stage0.policy import PolicyError, load_policy
from stage0.store import Store, ledger
from stage0.store.approvals import get_approval, list_approvals
from stage0.store.database import URL_ENV, redact_url, resolve_url
from stage0.store.keys import (
    PLANS,
    SCOPES,
    KeyError_,
    bootstrap,
    create_key,
    list_keys,
    lookup_key,
    revoke_key,
)
from stage0.store.signing import ensure_signing_key, rotate_signing_key
from stage0.store.webhooks import (
    EVENTS,
    add_webhook,
    deliveries_for,
    list_webhooks,
    remove_webhook,
)

DB_OPTION = click.option(
    "--db", "db", envvar=URL_ENV, default=None,
    help="Database URL: sqlite:///path.db or postgresql://user@host/db "
         "(default sqlite:///./stage0.db). Env: STAGE0_DATABASE_URL.",
)


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


@contextmanager
def _store(db: str | None, *, create: bool = False) -> Iterator[Store]:
    """The store, migrated; its connections are closed when the command is done.

    Only ``create`` (``stage0 serve``, ``stage0 migrate``) makes a new store: every other command
    refuses a URL that holds none (a mistyped path, the wrong working directory), rather than
    answering from an empty store it has just created.
    """
    store = Store(db)
    try:
        try:
            if not create and not store.exists():
                raise click.ClickException(
                    f"no Stage0 store at {_describe(store)}: pass the server's store with "
                    "--db or STAGE0_DATABASE_URL, or create one with `stage0 migrate`")
            store.migrate()
        except click.ClickException:
            raise
        except Exception as exc:  # noqa: BLE001 - report any connection or migration failure
            raise click.ClickException(
                f"cannot open the store {redact_url(store.url)}: {str(exc).splitlines()[0]}"
            ) from None
        yield store
    finally:
        store.dispose()


def _describe(store: Store) -> str:
    """The store's URL without its password; a relative SQLite path also as an absolute one."""
    url = redact_url(store.url)
    database = make_url(store.url).database if store.dialect == "sqlite" else None
    if database and database != ":memory:" and not os.path.isabs(database):
        return f"{url} ({os.path.abspath(database)})"
    return url


@click.command()
@DB_OPTION
def migrate(db: str | None) -> None:
    """Create the store, or upgrade its schema to this version's (idempotent; safe to run at
    every start, several servers at once on PostgreSQL)."""
    probe = Store(db)
    try:
        before = _schema_revision(probe) if probe.exists() else None
    except Exception:  # noqa: BLE001 - _store below reports the connection failure
        before = None
    finally:
        probe.dispose()
    with _store(db, create=True) as store:
        after = _schema_revision(store)
    what = ("created" if before is None else "up to date:" if before == after
            else f"upgraded from schema {before}:")
    click.echo(f"{what} {_describe(store)} (schema {after})")


def _schema_revision(store: Store) -> str:
    """The store's Alembic revision."""
    with store.connect() as conn:
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    return ",".join(sorted(str(r[0]) for r in rows)) or "none"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@DB_OPTION
@click.option("--policy", "policy_path", envvar="STAGE0_POLICY", default=None,
              type=click.Path(), help="Policy pack YAML, or a directory holding one (default: "
                                      "built-in). Reloaded on SIGHUP and when it changes.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes.")
@click.option("--frozen-time", "frozen_time", default=None,
              help="Pin the evaluation clock (ISO-8601) for demos and tests; recorded on every "
                   "decision.")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log every HTTP request.")
def serve(host: str, port: int, db: str | None, policy_path: str | None, workers: int,
          frozen_time: str | None, access_log: bool) -> None:
    """Serve the Stage0 HTTP API (POST /check, GET /usage, the decision log, health, metrics)."""
    from stage0.server import workers as workers_  # noqa: PLC0415 - only the server needs it

    # the port first: a busy port must fail before a store is created or a key is printed
    try:
        sockets = workers_.listen(host, port, workers)
    except OSError as exc:
        raise click.ClickException(
            f"{exc.strerror or exc} (is another server running there? choose another --port)"
        ) from None
    port = sockets[0].getsockname()[1]
    try:
        _serve_on(sockets, host, port, db, policy_path, workers, frozen_time, access_log)
    finally:
        for sock in sockets:
            sock.close()


def _serve_on(sockets: list[Any], host: str, port: int, db: str | None, policy_path: str | None,
              workers: int, frozen_time: str | None, access_log: bool) -> None:
    from stage0.server import workers as workers_  # noqa: PLC0415 - only the server needs it

    if frozen_time is not None:
        _instant(frozen_time, "--frozen-time")
        click.echo(click.style("warning: ", fg="yellow", bold=True)
                   + f"the evaluation clock is frozen at {frozen_time}; every decision records "
                     "it. Do not use this in production.", err=True)
    try:
        from stage0.policy.packset import PackSet, load_pack_set  # noqa: PLC0415

        packs = load_pack_set(policy_path) if policy_path else PackSet(load_policy(None))
        policy = packs.active
        click.echo(f"policy   {policy.policy_version} ({policy.sha256[:12]})", err=True)
        for held in packs.held:
            click.echo(f"held     {held.policy_version} ({held.sha256[:12]}) for pinned requests",
                       err=True)
    except PolicyError as exc:
        click.echo(click.style("policy error: ", fg="red", bold=True) + str(exc)
                   + "\nevery /check will fail closed (DENY) until the pack is fixed", err=True)
    with _store(db, create=True) as store:
        click.echo(f"store    {redact_url(store.url)}", err=True)
        secret = bootstrap(store)
        ensure_signing_key(store)
    if secret is not None:
        click.echo(
            "\n"
            + click.style("Created tenant `default` with an admin key (shown once):", bold=True)
            + f"\n\n    {secret}\n\n"
            f"Try it:\n    curl -s http://{host}:{port}/check -H 'x-api-key: {secret}' "
            "-H 'content-type: application/json' \\\n"
            "      -d '{\"goal\": \"Refund order 1042\", \"tools\": [\"payments.refund\"], "
            "\"side_effects\": [\"money movement\"], \"constraints\": [\"approval required\"]}'\n",
            err=True,
        )
    os.environ[URL_ENV] = resolve_url(db)
    if policy_path:
        os.environ["STAGE0_POLICY"] = str(Path(policy_path).resolve())
    if frozen_time:
        os.environ["STAGE0_FROZEN_TIME"] = frozen_time
    click.echo(f"serving  http://{host}:{port} ({workers} worker{'s' * (workers > 1)})", err=True)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="stage0-metrics-")
    try:
        code = workers_.serve("stage0.server.app:create_app_from_env", sockets=sockets,
                              workers=workers, access_log=access_log, log_level="info")
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    if code:
        sys.exit(code)


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
        with _store(db) as store:
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
    with _store(db) as store:
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
        with _store(db) as store:
            record = revoke_key(store, key_id)
    except KeyError_ as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"revoked {record.id} (tenant {record.tenant_id}, {record.name})")


@keys.command("rotate-signing")
@DB_OPTION
def keys_rotate_signing(db: str | None) -> None:
    """Add a new execution-token signing key; old public keys stay published until their
    tokens have expired."""
    with _store(db) as store:
        kid, retired = rotate_signing_key(store)
    click.echo(f"signing with {kid}; retired {', '.join(retired) or 'none'} (still published "
               "until their tokens expire)")


@click.group()
def approvals() -> None:
    """List, show, approve and reject approval requests; declare break-glass."""


KEY_OPTION = click.option(
    "--key", "api_key", envvar="STAGE0_API_KEY", default=None,
    help="The API key to act as (its principal and roles). Env: STAGE0_API_KEY.",
)


def _tenant_of(store: Store, api_key: str | None, tenant: str | None) -> str:
    if api_key:
        found = lookup_key(store, api_key)
        if found is None:
            raise click.UsageError("the key is unknown or revoked")
        return found.tenant_id
    return tenant or "default"


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

    with _store(db) as store:
        items = list_approvals(store, _tenant_of(store, api_key, tenant), status,
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

    with _store(db) as store:
        found = get_approval(store, _tenant_of(store, api_key, tenant), approval_id,
                             int(time.time() * 1e6))
        if found is not None:
            found["webhook_deliveries"] = deliveries_for(store, approval_id)
    if found is None:
        raise click.UsageError(f"no approval request `{approval_id}`")
    click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2))


def _decide(db: str | None, api_key: str | None, op: str, payload: dict[str, Any],
            policy_path: str | None) -> None:
    import uuid  # noqa: PLC0415

    from stage0.engine import system_clock  # noqa: PLC0415
    from stage0.server.pipeline import Job, Pipeline  # noqa: PLC0415

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
    with _store(db) as store:
        pipeline = Pipeline(store, packs.active, clock=system_clock, held=packs.held)
        try:
            outcome = pipeline.submit(Job(
                secret=api_key, raw=orjson.dumps(payload), request=None, invalid=None,
                request_id=str(uuid.uuid4()), client_request_id=False,
                started=0.0, op=op, payload=payload)).result(timeout=60)
        finally:
            pipeline.close()
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


@click.command("replay")
@DB_OPTION
@click.option("--candidate", "candidate_path", required=True,
              type=click.Path(dir_okay=False, exists=True), help="The candidate pack (YAML).")
@click.option("--tenant", default=None, help="Only this tenant's decisions.")
@click.option("--since", default=None, help="ISO-8601: decisions at or after.")
@click.option("--until", default=None, help="ISO-8601: decisions before.")
@click.option("--fail-on", "fail_on", type=click.Choice(["loosen", "change", "never"]),
              default="never", show_default=True,
              help="Exit 1 if any decision would loosen (DENY/DEFER to ALLOW, DENY to DEFER), "
                   "or change at all.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def policy_replay(db: str | None, candidate_path: str, tenant: str | None, since: str | None,
                  until: str | None, fail_on: str, fmt: str) -> None:
    """Re-evaluate recorded decisions under a candidate pack; show what would flip."""
    from tqdm import tqdm  # noqa: PLC0415

    from stage0.store.replay import LOOSER, count_decisions, replay  # noqa: PLC0415

    try:
        candidate = load_policy(candidate_path)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    with _store(db) as store:
        total = count_decisions(store, tenant)
        with tqdm(total=total, unit="dec", file=sys.stderr, disable=None) as bar:
            report = replay(store, candidate, tenant=tenant, since=_instant(since, "--since"),
                            until=_instant(until, "--until"), progress=bar)
    if fmt == "json":
        click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
    else:
        click.echo(f"replayed {report.total} decisions under {candidate.policy_version} "
                   f"({report.skipped} skipped); {report.changed} would change, "
                   f"{report.loosened} would loosen")
        click.echo(f"{'from':6} {'to':6} {'count':>7}  examples")
        for (before, after), n in sorted(report.flips.items()):
            mark = click.style(" LOOSER", fg="red") if (before, after) in LOOSER else ""
            examples = ", ".join(report.examples.get((before, after), []))
            click.echo(f"{before:6} {after:6} {n:>7}  {examples}{mark}")
        if report.new_codes:
            click.echo("new issue codes: " + ", ".join(
                f"{c} ({n})" for c, n in report.new_codes.most_common(10)))
        if report.gone_codes:
            click.echo("issue codes no longer raised: " + ", ".join(
                f"{c} ({n})" for c, n in report.gone_codes.most_common(10)))
    if (fail_on == "loosen" and report.loosened) or (fail_on == "change" and report.changed):
        sys.exit(1)


@click.command("shadow-report")
@DB_OPTION
@click.option("--tenant", default=None, help="Only this tenant's decisions.")
@click.option("--since", default=None, help="ISO-8601: decisions at or after.")
@click.option("--until", default=None, help="ISO-8601: decisions before.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def policy_shadow_report(db: str | None, tenant: str | None, since: str | None,
                         until: str | None, fmt: str) -> None:
    """Summarise the hits of shadow rules and the verdicts they would have changed."""
    from stage0.store.replay import shadow_report  # noqa: PLC0415

    with _store(db) as store:
        report = shadow_report(store, tenant=tenant, since=_instant(since, "--since"),
                               until=_instant(until, "--until"))
    if fmt == "json":
        click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2))
        return
    click.echo(f"{report.decisions} decisions, {report.with_hits} with shadow hits")
    for code, n in report.hits.most_common():
        click.echo(f"  {code}: {n} hit(s), e.g. {', '.join(report.examples.get(code, []))}")
    for code, n in report.errors.most_common():
        click.echo(f"  {code}: {n} evaluation error(s)")
    for (before, after), n in sorted(report.would_change.items()):
        click.echo(f"  enforcing would turn {n} {before} into {after}")


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
    with _store(db) as store:
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
    with _store(db) as store:
        hooks = list_webhooks(store, tenant)
    click.echo(orjson.dumps(hooks, option=orjson.OPT_INDENT_2))


@webhooks_group.command("remove")
@DB_OPTION
@click.argument("webhook_id")
def webhooks_remove(db: str | None, webhook_id: str) -> None:
    """Stop sending to a webhook."""
    with _store(db) as store:
        if not remove_webhook(store, webhook_id):
            raise click.UsageError(f"no active webhook `{webhook_id}`")
    click.echo(f"removed {webhook_id}")


@click.group()
def audit() -> None:
    """Verify and export the hash-chained decision log."""


@audit.command("verify")
@DB_OPTION
@click.option("--tenant", default=None, help="Only this tenant's chain.")
def audit_verify(db: str | None, tenant: str | None) -> None:
    """Recompute every chain; name each modified, inserted or deleted row. Exit 1 if any."""
    with _store(db) as store:
        reports = ledger.verify(store, tenant)
    broken = 0
    for report in reports:
        mark = click.style("ok", fg="green") if report.ok else click.style("BROKEN", fg="red")
        click.echo(f"{report.tenant}: {report.rows} rows {mark}")
        for problem in report.problems:
            click.echo(f"  - {problem}")
        broken += not report.ok
    if not reports:
        click.echo("no decisions logged yet")
    sys.exit(1 if broken else 0)


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

    since_at, until_at = _instant(since, "--since"), _instant(until, "--until")
    with _store(db) as store:
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

    from stage0.store.approvals import break_glass_report  # noqa: PLC0415

    since_at, until_at = _instant(since, "--since"), _instant(until, "--until")
    with _store(db) as store:
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
