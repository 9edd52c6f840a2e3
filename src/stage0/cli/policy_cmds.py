"""``stage0 policy validate`` and ``stage0 policy test``: lint a pack, run policy test suites;
``stage0 policy push``, ``status``, ``activate``, ``rollback``: distribute a pack through the
store to every replica (docs/operations.md, "Fleet: policy distribution").

Attached to the ``policy`` group in :mod:`stage0.cli.main`.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from stage0.cli.stores import DB_OPTION, open_store
from stage0.lifecycle.suites import CaseResult, SuiteError, load_suite, run_cases
from stage0.policy import PolicyError, load_policy
from stage0.policy.lint.codes import Located
from stage0.policy.loader import compile_text
from stage0.policy.validate import Report, validate_default, validate_path
from stage0.store import policies
from stage0.store.database import Store

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_PACK_SUFFIXES = (".yaml", ".yml")


@click.command("validate")
@click.argument("path", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--strict", is_flag=True, help="Treat warnings as errors (exit 1 on any problem).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="One line per issue, or one JSON document.")
def policy_validate(path: Path | None, strict: bool, fmt: str) -> None:
    """Check a policy pack (PATH, or every *.yaml in a directory; default: the built-in pack).

    Prints one line per issue, `file:line:column: CODE message (remediation)`, or with
    `--format json` the issues with their location.
    Exit status: 0 valid (warnings allowed), 1 any error, 2 unreadable PATH or usage.
    """
    if path is None:
        reports = [validate_default(strict=strict)]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _PACK_SUFFIXES and p.is_file())
        if not files:
            click.echo(click.style("error: ", fg="red", bold=True)
                       + f"no *.yaml pack in directory {path}", err=True)
            sys.exit(EXIT_USAGE)
        reports = [validate_path(p, strict=strict) for p in files]
    else:
        reports = [validate_path(path, strict=strict)]

    errors = sum(len(r.errors) for r in reports)
    warnings = sum(len(r.warnings) for r in reports)
    failed = not all(r.ok for r in reports)
    if fmt == "json":
        click.echo(orjson.dumps({"valid": not failed, "errors": errors, "warnings": warnings,
                                 "packs": [r.to_dict() for r in reports]},
                                option=orjson.OPT_INDENT_2))
    else:
        for report in reports:
            for found in report.issues:
                click.echo(_issue_line(found))
        click.echo(_validate_summary(reports, errors, warnings, failed))
    if any(f.code == "PACK_UNREADABLE" for r in reports for f in r.issues):
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


def _issue_line(found: Located) -> str:
    issue = found.issue
    label = "warning: " if found.is_warning else ""
    return (
        f"{click.style(str(found.location), bold=True)}: "
        f"{click.style(issue.code, fg='yellow' if found.is_warning else 'red')} "
        f"{label}{issue.message}" + click.style(f" ({issue.remediation})", dim=True)
    )


def _validate_summary(reports: list[Report], errors: int, warnings: int, failed: bool) -> str:
    what = reports[0].source if len(reports) == 1 else f"{len(reports)} packs"
    counts = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    if failed:
        return click.style(f"{what}: invalid ({counts})", fg="red", bold=True)
    return click.style(f"{what}: valid ({counts})", fg="green", bold=True)


@click.command("test")
@click.argument("suites", nargs=-1, required=True, metavar="SUITE...",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Policy pack YAML to test (default: the built-in stage0-policy-pack).")
def policy_test(suites: tuple[Path, ...], policy_path: Path | None) -> None:
    """Run policy test suites (YAML with a `cases:` list, or worked-example JSON files).

    Exit status: 0 every case passed, 1 any case failed, 2 unreadable suite or pack, or usage.
    """
    try:
        compiled = load_policy(policy_path)
    except PolicyError as exc:
        click.echo(click.style("policy error: ", fg="red", bold=True)
                   + f"{exc.source} does not load", err=True)
        pack = validate_path(policy_path) if policy_path is not None else None
        lines = [_issue_line(f) for f in pack.errors] if pack is not None else []
        for line in lines or [f"  {p}" for p in exc.problems]:
            click.echo(line, err=True)
        sys.exit(EXIT_USAGE)
    try:
        cases = [case for path in suites for case in load_suite(path)]
    except SuiteError as exc:
        click.echo(click.style("suite error: ", fg="red", bold=True) + str(exc), err=True)
        sys.exit(EXIT_USAGE)

    click.echo(click.style(f"policy {compiled.policy_version}", bold=True))
    report = run_cases(cases, compiled)
    for result in report.results:
        _print_result(result)
    summary = f"{report.passed} passed, {report.failed} failed"
    click.echo(click.style(summary, fg="green" if report.ok else "red", bold=True))
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


def _print_result(result: CaseResult) -> None:
    case = result.case
    if result.passed:
        click.echo(f"{click.style('PASS', fg='green', bold=True)}  {case.name}  "
                   + click.style(case.where, dim=True))
        return
    click.echo(f"{click.style('FAIL', fg='red', bold=True)}  {case.name}  "
               + click.style(case.where, dim=True))
    if result.error is not None:
        click.echo(f"      {click.style('error', fg='red')}: {result.error}")
        return
    for mismatch in result.mismatches:
        click.echo("      " + mismatch.describe())
    if result.reason:
        click.echo(click.style(f"      reason: {result.reason}", dim=True))


# -- distribution through the store ------------------------------------------------------------

BY_OPTION = click.option("--by", "by", default=None,
                         help="Who pushes or activates, as recorded (default: user@host).")
FORMAT_OPTION = click.option("--format", "fmt", type=click.Choice(["text", "json"]),
                             default="text", show_default=True)


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _now_us() -> int:
    return int(time.time() * 1e6)


def _refused(exc: policies.PushRefused, fmt: str) -> None:
    """Report a refusal: ``UNCHANGED`` is not an error (exit 0), the others exit 1."""
    if fmt == "json":
        click.echo(orjson.dumps({"ok": exc.code == "UNCHANGED", "refused": exc.code,
                                 "message": str(exc)}))
    elif exc.code == "UNCHANGED":
        click.echo(str(exc))
    else:
        click.echo(click.style(f"refused ({exc.code}): ", fg="red", bold=True) + str(exc),
                   err=True)
    sys.exit(EXIT_OK if exc.code == "UNCHANGED" else EXIT_FAILED)


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.command("push")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@DB_OPTION
@BY_OPTION
@click.option("--strict", is_flag=True, help="Refuse a pack with lint warnings too.")
@FORMAT_OPTION
def policy_push(path: Path, db: str | None, by: str | None, strict: bool, fmt: str) -> None:
    """Validate a pack file, store it as a new version and make it active on every replica.

    The same checks as `stage0 policy validate` run first. Refused: a pack whose content hash
    is the active one's (nothing to push, exit 0) and a `name@version` pushed before with other
    content (exit 1). A pack pushed before with the same content is activated again.
    Exit status: 0 pushed (or unchanged), 1 invalid or refused, 2 unreadable PATH or usage.
    """
    report = validate_path(path, strict=strict)
    if not report.ok:
        for found in report.issues:
            click.echo(_issue_line(found), err=True)
        click.echo(_validate_summary([report], len(report.errors), len(report.warnings), True),
                   err=True)
        unreadable = any(f.code == "PACK_UNREADABLE" for f in report.issues)
        sys.exit(EXIT_USAGE if unreadable else EXIT_FAILED)
    text = path.read_text("utf-8")
    try:
        compiled = compile_text(text, source=str(path))
    except PolicyError as exc:  # validate_path would have said so; defence in depth
        click.echo(click.style("policy error: ", fg="red", bold=True) + str(exc), err=True)
        sys.exit(EXIT_FAILED)
    with open_store(db) as store:
        try:
            result = policies.push(store, text, pushed_by=_who(by), now_us=_now_us(),
                                   policy=compiled)
        except policies.PushRefused as exc:
            _refused(exc, fmt)
            return
    version, active = result.version, result.active
    if fmt == "json":
        click.echo(orjson.dumps({"ok": True, "stored": result.stored,
                                 "version": version.to_dict(), "active": active.to_dict()},
                                option=orjson.OPT_INDENT_2))
        return
    how = "pushed" if result.stored else "already stored; activated again"
    for found in report.warnings:
        click.echo(_issue_line(found))
    click.echo(click.style(f"{version.policy_version}: {how} as generation "
                           f"{version.generation}", fg="green", bold=True)
               + f" (sha256 {version.sha256}), active (activation {active.epoch}). "
               "Replicas switch before their next commit; `stage0 policy status` shows them.")


@click.command("activate")
@click.argument("version")
@DB_OPTION
@BY_OPTION
@FORMAT_OPTION
def policy_activate(version: str, db: str | None, by: str | None, fmt: str) -> None:
    """Make a pushed version active again: VERSION is `name@version` or a generation number.

    Exit status: 0 activated (or already active), 1 unknown version.
    """
    with open_store(db) as store:
        try:
            active = policies.activate(store, version, by=_who(by), now_us=_now_us())
        except policies.PushRefused as exc:
            _refused(exc, fmt)
            return
    _activated(active, fmt)


@click.command("rollback")
@DB_OPTION
@BY_OPTION
@FORMAT_OPTION
def policy_rollback(db: str | None, by: str | None, fmt: str) -> None:
    """Make the previously active version active again (a second rollback undoes the first).

    Exit status: 0 rolled back, 1 nothing to roll back to.
    """
    with open_store(db) as store:
        try:
            active = policies.rollback(store, by=_who(by), now_us=_now_us())
        except policies.PushRefused as exc:
            _refused(exc, fmt)
            return
    _activated(active, fmt)


def _activated(active: policies.ActivePolicy, fmt: str) -> None:
    if fmt == "json":
        click.echo(orjson.dumps({"ok": True, "active": active.to_dict()},
                                option=orjson.OPT_INDENT_2))
        return
    click.echo(click.style(f"{active.policy_version} (generation {active.generation}) is "
                           "active", fg="green", bold=True)
               + f" (activation {active.epoch}, previously generation "
               f"{active.previous_generation}).")


def _status(store: Store, ttl_s: float) -> dict[str, Any]:
    active = policies.active_policy(store)
    live = policies.replicas(store, seen_since_us=_now_us() - int(ttl_s * 1e6))
    drifting = [r.replica_id for r in live
                if active is not None and r.sha256 != active.sha256]
    return {"active": active.to_dict() if active else None,
            "versions": [v.to_dict() for v in policies.versions(store)],
            "replicas": [r.to_dict() for r in live], "drifting": drifting}


@click.command("status")
@DB_OPTION
@click.option("--wait", "wait_s", type=float, default=0.0, show_default=True,
              help="Wait up to this many seconds for every live replica to serve the active "
                   "version; exit 1 if one still does not.")
@click.option("--replica-ttl", "ttl_s", type=float, default=None,
              help="A replica whose heartbeat is older than this many seconds is gone "
                   "(default: STAGE0_POLICY_REPLICA_TTL_S, else 30).")
@FORMAT_OPTION
def policy_status(db: str | None, wait_s: float, ttl_s: float | None, fmt: str) -> None:
    """Show the active version, every pushed version and each live replica's version.

    Exit status: 0; with `--wait`, 1 when a live replica still drifts (or fails to load the
    active version) at the end of the wait.
    """
    ttl = ttl_s if ttl_s is not None else float(os.environ.get("STAGE0_POLICY_REPLICA_TTL_S",
                                                               "30"))
    with open_store(db) as store:
        status = _status(store, ttl)
        deadline = time.monotonic() + wait_s
        while wait_s > 0 and status["drifting"] and time.monotonic() < deadline:
            time.sleep(0.5)
            status = _status(store, ttl)
    if fmt == "json":
        click.echo(orjson.dumps(status, option=orjson.OPT_INDENT_2))
    else:
        _print_status(status)
    sys.exit(EXIT_FAILED if wait_s > 0 and status["drifting"] else EXIT_OK)


def _print_status(status: dict[str, Any]) -> None:
    active = status["active"]
    if not isinstance(active, dict):
        click.echo("no policy was pushed: every replica serves its --policy file or the "
                   "built-in pack")
    else:
        click.echo(click.style(f"active: {active['policy_version']} (generation "
                               f"{active['generation']})", bold=True)
                   + f" sha256 {active['sha256']}, activation {active['epoch']} by "
                   f"{active['activated_by']} at {_when(int(active['activated_us']))}")
    versions = status["versions"]
    if versions:
        click.echo("versions:")
    for v in versions:
        mark = "*" if isinstance(active, dict) and v["generation"] == active["generation"] else " "
        click.echo(f" {mark} {v['generation']:>4}  {v['policy_version']:<40} "
                   f"{v['sha256'][:12]}  {v['pushed_by']} {_when(v['pushed_us'])}")
    replicas, drifting = status["replicas"], status["drifting"]
    click.echo(f"replicas: {len(replicas)} live, {len(drifting)} not serving the active version")
    for r in replicas:
        flag = click.style(" DRIFT", fg="red", bold=True) if r["replica_id"] in drifting else ""
        click.echo(f"   {r['replica_id']:<36} {r['state']:<9} generation "
                   f"{r['generation'] if r['generation'] is not None else '-':>4}  "
                   f"{r['policy_version'] or 'no policy'}  seen {_when(r['seen_us'])}{flag}"
                   + (f"\n      {r['error']}" if r["error"] else ""))


__all__ = ["policy_activate", "policy_push", "policy_rollback", "policy_status", "policy_test",
           "policy_validate"]
