"""``stage0 serve`` and ``stage0 migrate``."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import click

from stage0.cli.stores import DB_OPTION, describe_store, open_store, option_instant, schema_revision
from stage0.policy import PolicyError, load_policy
from stage0.policy.loader import policy_source
from stage0.store import Store, policies
from stage0.store.database import URL_ENV, redact_url, resolve_url
from stage0.store.keys import bootstrap
from stage0.store.signing import ensure_signing_key


@click.command()
@DB_OPTION
def migrate(db: str | None) -> None:
    """Create the store, or upgrade its schema to this version's (idempotent; safe to run at
    every start, several servers at once on PostgreSQL)."""
    probe = Store(db)
    try:
        before = schema_revision(probe) if probe.exists() else None
    except Exception:  # noqa: BLE001 - open_store below reports the connection failure
        before = None
    finally:
        probe.dispose()
    with open_store(db, create=True) as store:
        after = schema_revision(store)
    what = ("created" if before is None else "up to date:" if before == after
            else f"upgraded from schema {before}:")
    click.echo(f"{what} {describe_store(store)} (schema {after})")


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
        log_config = _observability()  # #16: STAGE0_LOG_FORMAT, tracing's extra
        _serve_on(sockets, host, port, db, policy_path, workers, frozen_time, access_log,
                  log_config)
    finally:
        for sock in sockets:
            sock.close()


def _observability() -> dict[str, Any] | None:
    """#16: the logging config of ``STAGE0_LOG_FORMAT`` (``None``: uvicorn's own, text), and
    a clear error before anything starts when tracing is configured without its extra."""
    from stage0.server import logs, tracing  # noqa: PLC0415 - only the server needs them

    try:
        fmt = logs.log_format()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    missing = tracing.missing_extra()
    if missing is not None:
        raise click.ClickException(missing)
    if fmt != "json":
        return None
    logs.configure("json")  # this process's lines (the supervisor's) too
    global _say  # noqa: PLW0603 - the start-up lines become JSON lines
    _say = _say_json
    return logs.uvicorn_log_config()


def _say_json(message: str, err: bool = True) -> None:
    import logging  # noqa: PLC0415

    logging.getLogger("stage0.serve").info(click.unstyle(message).strip())


_say: Any = click.echo
"""How ``stage0 serve`` tells what it starts (``_say_json`` with JSON logs)."""


def _serve_on(sockets: list[Any], host: str, port: int, db: str | None, policy_path: str | None,
              workers: int, frozen_time: str | None, access_log: bool,
              log_config: dict[str, Any] | None = None) -> None:
    from stage0.server import workers as workers_  # noqa: PLC0415 - only the server needs it

    if frozen_time is not None:
        option_instant(frozen_time, "--frozen-time")
        _say(click.style("warning: ", fg="yellow", bold=True)
                   + f"the evaluation clock is frozen at {frozen_time}; every decision records "
                     "it. Do not use this in production.", err=True)
    try:
        from stage0.policy.packset import PackSet, load_pack_set  # noqa: PLC0415

        packs = load_pack_set(policy_path) if policy_path else PackSet(load_policy(None))
        policy = packs.active
        _say(f"policy   {policy.policy_version} ({policy.sha256[:12]})", err=True)
        for held in packs.held:
            _say(f"held     {held.policy_version} ({held.sha256[:12]}) for pinned requests",
                       err=True)
    except PolicyError as exc:
        _say(click.style("policy error: ", fg="red", bold=True) + str(exc)
                   + "\nevery /check will fail closed (DENY) until the pack is fixed", err=True)
    with open_store(db, create=True) as store:
        _say(f"store    {redact_url(store.url)}", err=True)
        active = policies.active_policy(store)  # a pushed pack wins over --policy (#16)
        if active is not None:
            _say(f"policy   {active.policy_version} ({active.sha256[:12]}) pushed to the "
                       f"store, generation {active.generation}: it is served"
                       + (", not --policy" if policy_path else ""), err=True)
        secret = bootstrap(store)
        ensure_signing_key(store)
    if secret is not None:
        _say(
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
        os.environ["STAGE0_POLICY"] = policy_source(policy_path)  # a preset name stays one
    if frozen_time:
        os.environ["STAGE0_FROZEN_TIME"] = frozen_time
    _say(f"serving  http://{host}:{port} ({workers} worker{'s' * (workers > 1)})", err=True)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="stage0-metrics-")
    try:
        code = workers_.serve("stage0.app:create_app_from_env", sockets=sockets,
                              workers=workers, access_log=access_log, log_level="info",
                              **({"log_config": log_config} if log_config else {}))
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    if code:
        sys.exit(code)
