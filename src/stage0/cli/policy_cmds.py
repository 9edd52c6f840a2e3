"""``stage0 policy validate`` and ``stage0 policy test``: lint a pack, run policy test suites.

Attached to the ``policy`` group in :mod:`stage0.cli.main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from stage0.lifecycle.suites import CaseResult, SuiteError, load_suite, run_cases
from stage0.policy import PolicyError, load_policy
from stage0.policy.lint.codes import Located
from stage0.policy.validate import Report, validate_default, validate_path

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


__all__ = ["policy_test", "policy_validate"]
