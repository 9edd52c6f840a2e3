"""Replay of recorded decisions under a candidate pack, and shadow rules, on both stores."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import yaml
from click.testing import CliRunner

from stage0.lifecycle.replay import replay, shadow_report
from stage0.policy import compile_document, load_policy
from stage0.policy.loader import default_pack_text
from stage0.store import ledger
from tests.conftest import EXAMPLES
from tests.helpers import request
from tests.service.conftest import running_app

BY_TIME = {t: list(g) for t, g in itertools.groupby(
    sorted(EXAMPLES, key=lambda e: e.evaluated_at), key=lambda e: e.evaluated_at)}


def record_examples(db_url: str) -> None:
    """Every worked example through the service, each at its own time, run state included."""
    for at, examples in sorted(BY_TIME.items()):
        with running_app(db_url, frozen_time=at) as api:
            for example in examples:
                key = api.new_key(tenant=f"t-{example.name}")
                assert api.check(example.request, key=key).status_code == 200


def pack_file(tmp_path: Path, name: str, mutate: object) -> str:
    doc = yaml.safe_load(default_pack_text())
    mutate(doc)  # type: ignore[operator]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_replaying_under_the_same_pack_changes_nothing(db_url: str) -> None:
    record_examples(db_url)
    from stage0.store import Store  # noqa: PLC0415

    store = Store(db_url)
    report = replay(store, load_policy())
    changed = {r for examples in report.examples.values() for r in examples}
    originals = [  # what the recorded decisions said, to tell a real change from a flake
        [(i["code"], i["message"]) for i in found["response"]["issues"]]
        for e in EXAMPLES for r in changed
        if (found := ledger.get(store, f"t-{e.name}", r)) is not None]
    store.dispose()
    assert report.total == len(EXAMPLES)
    assert report.changed == 0, (report.to_dict(), originals)


def test_a_stricter_and_a_looser_candidate(db_url: str, tmp_path: Path) -> None:
    record_examples(db_url)

    def stricter(doc: dict) -> None:  # type: ignore[type-arg]
        doc["rules"].append({
            "code": "NO_BULK_ARCHIVE", "condition": "'destructive_data' in buckets",
            "message": "Destructive data operations are frozen", "remediation": "Wait"})

    def looser(doc: dict) -> None:  # type: ignore[type-arg]
        doc["buckets"]["money_movement"]["require"]["approval"] = False

    runner = CliRunner()
    strict = runner.invoke(__import__("stage0.cli.main", fromlist=["cli"]).cli, [
        "policy", "replay", "--db", db_url, "--candidate",
        pack_file(tmp_path, "strict.yaml", stricter), "--format", "json",
        "--fail-on", "loosen"])
    assert strict.exit_code == 0, strict.output
    body = orjson.loads(strict.stdout)
    flips = {(f["from"], f["to"]): f["count"] for f in body["flips"]}
    assert flips[("ALLOW", "DENY")] == 1  # protected-request
    assert body["loosened"] == 0
    assert body["new_codes"] == {"NO_BULK_ARCHIVE": 5}  # the five protected-request examples
    loose = runner.invoke(__import__("stage0.cli.main", fromlist=["cli"]).cli, [
        "policy", "replay", "--db", db_url, "--candidate",
        pack_file(tmp_path, "loose.yaml", looser), "--fail-on", "loosen"])
    assert loose.exit_code == 1, loose.output
    assert "LOOSER" in loose.stdout
    assert "DEFER  ALLOW" in loose.stdout


def test_shadow_rules_report_but_never_decide(db_url: str, tmp_path: Path) -> None:
    def shadow(doc: dict) -> None:  # type: ignore[type-arg]
        doc["rules"].append({
            "code": "LARGE_AMOUNT", "mode": "shadow", "severity": "HIGH", "effect": "DENY",
            "condition": "has(arguments.amount) && double(arguments.amount) > 1000.0",
            "message": "Amounts over 1000 would be denied", "remediation": "Split it"})

    pack = pack_file(tmp_path, "shadow.yaml", shadow)
    compile_document(yaml.safe_load(Path(pack).read_text()))
    with running_app(db_url, policy=pack) as api:
        big = api.check(request(arguments={"amount": 5000})).json()
        small = api.check(request(arguments={"amount": 5})).json()
    assert big["verdict"] == "ALLOW"
    assert [i["code"] for i in big["shadow_issues"]] == ["LARGE_AMOUNT"]
    assert big["shadow_issues"][0]["effect"] == "DENY"
    assert small["shadow_issues"] == []
    from stage0.store import Store  # noqa: PLC0415

    store = Store(db_url)
    report = shadow_report(store)
    store.dispose()
    assert report.hits == {"LARGE_AMOUNT": 1}
    assert report.would_change == {("ALLOW", "DENY"): 1}
    result = CliRunner().invoke(__import__("stage0.cli.main", fromlist=["cli"]).cli, [
        "policy", "shadow-report", "--db", db_url])
    assert "LARGE_AMOUNT: 1 hit(s)" in result.stdout
    assert "enforcing would turn 1 ALLOW into DENY" in result.stdout
