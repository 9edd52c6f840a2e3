"""``stage0``: check a request, inspect the policy, export schemas.

Exit status of ``stage0 check``: 0 ALLOW, 10 DEFER, 20 DENY, 2 invalid input or usage.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson

from stage0 import __version__
from stage0.cli.approvals_cmds import approvals
from stage0.cli.audit_cmds import audit
from stage0.cli.export_cmds import export_group
from stage0.cli.keys_cmds import keys
from stage0.cli.mcp_proxy import mcp_proxy
from stage0.cli.policy_cmds import (
    policy_activate,
    policy_push,
    policy_rollback,
    policy_status,
    policy_test,
    policy_validate,
)
from stage0.cli.render import render_text
from stage0.cli.replay_cmds import policy_replay, policy_shadow_report
from stage0.cli.serve import migrate, serve
from stage0.cli.webhooks_cmds import webhooks_group
from stage0.contract import CheckRequest, CheckResponse, RequestValidationError
from stage0.contract.request import parse_instant
from stage0.engine import Engine, InMemoryRunState
from stage0.policy import CompiledPolicy, PolicyError, load_policy

EXIT_CODES = {"ALLOW": 0, "DEFER": 10, "DENY": 20}
EXIT_INVALID = 2

POLICY_OPTION = click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="STAGE0_POLICY",
    help="Policy pack YAML (default: the built-in stage0-policy-pack). Env: STAGE0_POLICY.",
)


class _Instant(click.ParamType):  # type: ignore[type-arg]  # generic only in stubs
    name = "ISO-8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_instant(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="stage0")
def cli() -> None:
    """Stage0: pre-execution authorization for AI agents (ALLOW, DEFER or DENY)."""


def _read_input(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read `{source}`: {exc.strerror or exc}") from None


def _unwrap_example(raw: bytes) -> tuple[bytes | dict[str, Any], datetime | None]:
    """Accept a worked-example document (``{"request": ..., "evaluated_at": ...}``) as well."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw, None
    if isinstance(doc, dict) and "request" in doc and "goal" not in doc:
        at = doc.get("evaluated_at")
        request = doc["request"]
        if not isinstance(request, dict):
            return raw, None
        try:
            return request, parse_instant(at) if isinstance(at, str) else None
        except ValueError as exc:
            raise click.BadParameter(f"the example's `evaluated_at`: {exc}") from None
    return raw, None


def _load_policy_or_none(path: Path | None) -> CompiledPolicy | None:
    try:
        return load_policy(path)
    except PolicyError as exc:
        click.echo(click.style("policy error: ", fg="red", bold=True) + str(exc), err=True)
        return None


@cli.command()
@click.argument("source", metavar="FILE|-")
@click.option("--at", "at", type=_Instant(), help="Evaluation time (default: now, or the "
              "example's `evaluated_at` when FILE is a worked example).")
@POLICY_OPTION
@click.option("--pro", is_flag=True, help="Evaluate strictly, as if the request set `pro: true`.")
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json",
              show_default=True, help="Full JSON response, or a readable summary.")
def check(source: str, at: datetime | None, policy_path: Path | None, pro: bool, fmt: str) -> None:
    """Decide one /check request read from FILE (or - for standard input).

    Exit status: 0 ALLOW, 10 DEFER, 20 DENY, 2 invalid input or usage.
    """
    raw = _read_input(source)
    body, example_at = _unwrap_example(raw)
    if pro:
        if isinstance(body, bytes):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                body = parsed
        if isinstance(body, dict):
            body = {**body, "pro": True}
    engine = Engine(_load_policy_or_none(policy_path), run_state=InMemoryRunState())
    try:
        decision = engine.check(body, at=at or example_at)
    except RequestValidationError as exc:
        if fmt == "json":
            click.echo(orjson.dumps(exc.to_dict(), option=orjson.OPT_INDENT_2), err=True)
        else:
            click.echo(click.style("invalid request", fg="red", bold=True), err=True)
            for e in exc.errors:
                click.echo(f"  {e.field}: {e.message}", err=True)
        sys.exit(EXIT_INVALID)
    if fmt == "json":
        click.echo(decision.to_json(indent=True))
    else:
        click.echo(render_text(decision))
    sys.exit(EXIT_CODES.get(decision.verdict, 20))


@cli.group()
def policy() -> None:
    """Inspect, test and distribute policy packs."""


@policy.command("show")
@POLICY_OPTION
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def policy_show(policy_path: Path | None, fmt: str) -> None:
    """Show the active pack: version, sha256, buckets, windows and rules."""
    try:
        compiled = load_policy(policy_path)
    except PolicyError as exc:
        click.echo(click.style("policy error: ", fg="red", bold=True) + str(exc), err=True)
        sys.exit(EXIT_INVALID)
    summary = {
        "policy_version": compiled.policy_version,
        "policy_sha256": compiled.sha256,
        "description": compiled.document.description,
        "timezone": compiled.document.timezone,
        "buckets": {
            b.name: {
                "description": b.description,
                "risk_weight": b.risk_weight,
                "tools": list(b.tool_matcher.patterns),
                "side_effects": sorted(b.side_effects),
                "requires": {
                    "approval": b.approval,
                    "approval_evidence": b.approval_evidence,
                    "environment": b.environment,
                    "rollback_plan": b.rollback_plan,
                    "mfa": b.mfa,
                    "ticket": b.ticket,
                },
            }
            for b in compiled.buckets
        },
        "change_windows": {n: w.describe() for n, w in compiled.windows.items()},
        "rules": [r.spec.code for r in compiled.rules],
    }
    if fmt == "json":
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        return
    click.echo(click.style(compiled.policy_version, bold=True))
    click.echo(f"sha256    {compiled.sha256}")
    click.echo(f"timezone  {compiled.document.timezone}")
    click.echo("buckets")
    for name, b in summary["buckets"].items():  # type: ignore[attr-defined]  # dict built above
        req = ", ".join(k if v is True else f"{k}={v}" for k, v in b["requires"].items()
                        if v not in (False, "never", "any"))
        click.echo(f"  {name}: {b['description']} (risk {b['risk_weight']}; requires {req})")
    click.echo("change windows")
    for name, text in summary["change_windows"].items():  # type: ignore[attr-defined]
        click.echo(f"  {name}: {text}")
    if compiled.rules:
        click.echo("rules")
        for r in compiled.rules:
            click.echo(f"  {r.spec.code} [{r.spec.effect}]: {r.source}")


@cli.command()
@click.argument("which", type=click.Choice(["request", "response"]))
def schema(which: str) -> None:
    """Print the JSON Schema of the /check request or response."""
    model = CheckRequest if which == "request" else CheckResponse
    click.echo(orjson.dumps(model.model_json_schema(), option=orjson.OPT_INDENT_2))


cli.add_command(serve)
cli.add_command(migrate)
cli.add_command(keys)
cli.add_command(audit)
cli.add_command(export_group)
cli.add_command(approvals)
cli.add_command(webhooks_group)
cli.add_command(mcp_proxy)
policy.add_command(policy_validate)
policy.add_command(policy_test)
policy.add_command(policy_replay)
policy.add_command(policy_shadow_report)
policy.add_command(policy_push)
policy.add_command(policy_status)
policy.add_command(policy_activate)
policy.add_command(policy_rollback)


def main() -> None:
    cli()
