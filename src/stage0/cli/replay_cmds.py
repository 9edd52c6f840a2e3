"""``stage0 policy replay`` and ``stage0 policy shadow-report``: a pack against recorded
decisions."""

from __future__ import annotations

import sys

import click
import orjson

from stage0.cli.stores import DB_OPTION, open_store, option_instant
from stage0.policy import PolicyError, load_policy


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

    from stage0.lifecycle.replay import LOOSER, count_decisions, replay  # noqa: PLC0415

    try:
        candidate = load_policy(candidate_path)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    with open_store(db) as store:
        total = count_decisions(store, tenant)
        with tqdm(total=total, unit="dec", file=sys.stderr, disable=None) as bar:
            report = replay(store, candidate, tenant=tenant, since=option_instant(since, "--since"),
                            until=option_instant(until, "--until"), progress=bar)
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
    from stage0.lifecycle.replay import shadow_report  # noqa: PLC0415

    with open_store(db) as store:
        report = shadow_report(store, tenant=tenant, since=option_instant(since, "--since"),
                               until=option_instant(until, "--until"))
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
