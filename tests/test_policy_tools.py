"""`stage0 policy validate` and `stage0 policy test`: every problem code, positions, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from stage0.cli.main import cli
from stage0.contract import CODES
from stage0.lifecycle.suites import SuiteError, load_suite, parse_suite, run_suites
from stage0.policy import PolicyError, compile_text, load_policy
from stage0.policy.lint.codes import LINT_CODES, Located
from stage0.policy.loader import default_pack_text
from stage0.policy.validate import validate_default, validate_text
from tests.conftest import REPO, examples_dir

SAMPLE_PACK = REPO / "examples" / "sample-pack.yaml"
SAMPLE_SUITE = REPO / "examples" / "policy-tests.yaml"

BASE = """\
apiVersion: stage0/v1
name: tiny
version: 1.0.0
side_effects: {write_class: [write]}
sensitive_tools: {patterns: [bash]}
value_signal: {action_verbs: [run]}
buckets:
  money: {description: Payouts, risk_weight: 40, tools: ["*payout*"]}
"""

RULE = """\
rules:
  - code: {code}
    condition: "{condition}"
    severity: {severity}
    effect: {effect}
    message: The action is checked
    remediation: Do something else
"""


def _rule(code: str = "ACME_RULE", condition: str = "true", severity: str = "HIGH",
          effect: str = "DENY", extra: str = "") -> str:
    text = RULE.format(code=code, condition=condition, severity=severity, effect=effect)
    return BASE + text + extra


def _window(name: str, days: str, start: str, end: str, tz: str = "") -> str:
    zone = f", timezone: {tz}" if tz else ""
    return f'  {name}: {{days: {days}, start: "{start}", end: "{end}"{zone}}}\n'


# Each problem code, a pack that has the problem, and where it is (line:column, 1-based).
CASES: dict[str, tuple[str, str | None]] = {
    "PACK_BAD_YAML": ("apiVersion: stage0/v1\nname: [tiny\n", None),
    "PACK_DUPLICATE_KEY": (BASE + "name: again\n", "9:1"),
    "PACK_UNKNOWN_KEY": (BASE + "timezon: UTC\n", "9:1"),
    "PACK_MISSING_KEY": (BASE.replace("name: tiny\n", ""), "1:1"),
    "PACK_BAD_VALUE": (BASE.replace("risk_weight: 40", "risk_weight: 400"), "8:46"),
    "PACK_BAD_TIMEZONE": (BASE + "timezone: Europe/Berln\n", "9:11"),
    "PACK_BAD_CEL": (_rule(condition="contxt.tenant_id == tenant"), "11:23"),
    "PACK_BUILTIN_CODE": (_rule(code="APPROVAL_REQUIRED_PENDING"), "10:11"),
    "PACK_UNKNOWN_CONSTRAINT": (BASE + "constraint_aliases:\n  requre_ticket: [tkt]\n", "10:3"),
    "PACK_UNKNOWN_WINDOW": (
        BASE + 'constraint_aliases:\n  allowed_change_window: ["maint_only=maintenance"]\n',
        "10:27",
    ),
    "PACK_EMPTY_WINDOW": (
        BASE + "change_windows:\n" + _window("maint", "[sat]", "02:00", "02:00"), "10:45"
    ),
    "PACK_DUPLICATE_WINDOW": (
        BASE + "change_windows:\n" + _window("maint", "[sat]", "02:00", "04:00")
        + _window("Maint", "[sun]", "02:00", "04:00"),
        "11:3",
    ),
    "PACK_OVERLAPPING_WINDOWS": (
        BASE + "change_windows:\n" + _window("a_hours", "[mon]", "09:00", "17:00")
        + _window("b_hours", "[mon]", "16:00", "18:00", "Europe/London"),
        "11:3",
    ),
    "PACK_LOOSENING_RULE": (_rule(effect="ALLOW"), "13:13"),
    "PACK_RULE_NOT_ENFORCED": (_rule(effect="NONE"), "13:13"),
    "PACK_INVALID": (BASE + "evaluation: {timeout_ms: .inf}\n", "1:1"),
    "PACK_BAD_EXTENDS": ("extends: acme-base\nname: tiny\nversion: 1.0.0\n", "1:10"),
    "PACK_LOOSENS_BASE": (
        "extends: stage0-policy-pack\nname: tiny\nversion: 1.0.0\n"
        "break_glass:\n  roles: [sre]\n", "5:10"),
}


def _problems(text: str) -> list[Located]:
    return validate_text(text, source="pack.yaml").issues


def _where(found: Located) -> str:
    return f"{found.location.line}:{found.location.column}"


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_every_problem_code_has_a_case() -> None:
    assert set(CASES) | {"PACK_UNREADABLE"} == set(LINT_CODES)


def test_lint_codes_are_issue_codes_of_their_own() -> None:
    assert not set(LINT_CODES) & set(CODES)
    for code, spec in LINT_CODES.items():
        assert spec.code == code
        assert spec.message
        assert spec.remediation
        if spec.severity == "HIGH":  # an error: the pack cannot be loaded
            assert (spec.effect, spec.pro_effect) == ("DENY", "DENY"), code
        else:  # a warning: an advisory, which --strict (lint's `pro`) makes fail
            assert (spec.severity, spec.effect, spec.pro_effect) == ("MEDIUM", "NONE", "DENY")


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_problem_is_caught_with_its_position(code: str) -> None:
    text, where = CASES[code]
    found = [p for p in _problems(text) if p.code == code]
    assert found, (code, [p.format() for p in _problems(text)])
    first = found[0]
    spec = LINT_CODES[code]
    assert (first.issue.severity, first.issue.effect) == (spec.severity, spec.effect)
    assert first.issue.remediation
    assert first.location.file == "pack.yaml"
    if where is not None:
        assert _where(first) == where, first.format()
    assert first.format().startswith(f"pack.yaml:{_where(first)}: {code} ")


def test_findings_carry_their_yaml_path() -> None:
    (cel,) = _problems(_rule(condition="contxt.tenant_id == tenant"))
    assert cel.location.path == ("rules", 0, "condition")
    (key,) = _problems(BASE + "timezon: UTC\n")
    assert key.location.path == ("timezon",)
    assert key.to_dict() == {
        "code": "PACK_UNKNOWN_KEY", "severity": "HIGH", "effect": "DENY",
        "message": "unknown key `timezon` in the pack",
        "remediation": "did you mean `timezone`?",
        "location": {"file": "pack.yaml", "line": 9, "column": 1, "path": ["timezon"]},
    }


def test_the_loaders_problems_are_coded_issues_with_their_path() -> None:
    text = _rule(code="APPROVAL_REQUIRED_PENDING") + "timezone: Mars/Base\n"
    with pytest.raises(PolicyError) as info:
        compile_text(text, source="pack.yaml")
    found = {(f.code, f.location.path) for f in info.value.issues}
    assert found == {("PACK_BUILTIN_CODE", ("rules", 0, "code")),
                     ("PACK_BAD_TIMEZONE", ("timezone",))}
    assert len(info.value.issues) == len(info.value.problems)
    with pytest.raises(PolicyError) as info:
        compile_text("extends: stage0-policy-pack\nname: a\nversion: 1.0.0\n"
                     "break_glass: {roles: [sre]}\n")
    (loosening,) = info.value.issues
    assert (loosening.code, loosening.location.path) == ("PACK_LOOSENS_BASE",
                                                         ("break_glass", "roles"))
    assert info.value.problems == [
        "extends: break_glass.roles: cannot grow (name the base's roles or fewer)"]


def test_a_rule_written_with_id_and_when_is_located_at_those_keys() -> None:
    text = BASE + ('rules:\n  - id: APPROVAL_REQUIRED_PENDING\n    when: "goal + 1"\n'
                   "    message: m\n    remediation: r\n")
    found = {(f.code, f.location.path, _where(f)) for f in _problems(text)}
    assert found == {("PACK_BUILTIN_CODE", ("rules", 0, "id"), "10:9"),
                     ("PACK_BAD_CEL", ("rules", 0, "when"), "11:17")}


def test_strict_gives_warnings_effect_deny() -> None:
    text = _rule(effect="NONE")
    (lax,) = validate_text(text).issues
    (strict,) = validate_text(text, strict=True).issues
    assert (lax.issue.effect, strict.issue.effect) == ("NONE", "DENY")
    assert lax.is_warning
    assert strict.is_warning
    assert validate_text(text).ok
    assert not validate_text(text, strict=True).ok


def test_bad_yaml_points_at_the_syntax_error() -> None:
    (problem,) = _problems("apiVersion: stage0/v1\nname: [tiny\n")
    assert problem.code == "PACK_BAD_YAML"
    assert problem.location.line == 3


def test_one_run_reports_every_problem_even_after_a_schema_error() -> None:
    text = _rule(condition="goal + 1") + "timezon: UTC\ntimezone: Mars/Base\n"
    codes = {p.code for p in _problems(text)}
    assert {"PACK_UNKNOWN_KEY", "PACK_BAD_CEL", "PACK_BAD_TIMEZONE"} <= codes


def test_hints_say_did_you_mean() -> None:
    (key,) = _problems(BASE.replace("risk_weight: 40", "risk_weight: 40, tols: [a]"))
    assert key.code == "PACK_UNKNOWN_KEY"
    assert key.issue.remediation == "did you mean `tools`?"
    (day,) = _problems(BASE + "change_windows:\n" + _window("w", "[mon, tues]", "09:00", "17:00"))
    assert (day.code, day.issue.remediation) == ("PACK_BAD_VALUE", "did you mean `tue`?")
    (zone,) = _problems(BASE + "timezone: Europe/Berln\n")
    assert zone.issue.remediation == "did you mean `Europe/Berlin`?"
    (cel,) = _problems(_rule(condition="contxt.tenant_id == tenant"))
    assert cel.issue.remediation == "did you mean `context`?"
    assert "\n" not in cel.issue.message


def test_cel_error_of_the_loader_is_reported_once() -> None:
    text = default_pack_text().replace("t != tenant", "t != tenantx")
    problems = validate_text(text).issues
    assert [p.code for p in problems] == ["PACK_BAD_CEL"]


def test_shadow_and_advisory_rules_are_not_flagged() -> None:
    assert not _problems(_rule(effect="NONE", severity="LOW"))
    assert not _problems(_rule(effect="NONE", extra="    pro_effect: DENY\n"))


def test_a_rule_named_like_a_block_with_effect_none_is_a_warning() -> None:
    (problem,) = _problems(_rule(code="BLOCK_WIRES", effect="NONE", severity="MEDIUM"))
    assert (problem.code, problem.is_warning) == ("PACK_RULE_NOT_ENFORCED", True)
    assert (problem.issue.severity, problem.issue.effect) == ("MEDIUM", "NONE")


def test_a_weaker_pro_effect_is_loosening() -> None:
    (problem,) = _problems(_rule(effect="DEFER", extra="    pro_effect: NONE\n"))
    assert problem.code == "PACK_LOOSENING_RULE"
    assert problem.location.line == 16


def test_windows_past_midnight_and_in_other_zones_do_not_overlap() -> None:
    text = (BASE + "change_windows:\n" + _window("late", "[fri]", "22:00", "02:00")
            + _window("early", "[sat]", "03:00", "05:00")
            + _window("berlin", "[mon]", "09:00", "10:00", "Europe/Berlin")
            + _window("utc", "[mon]", "09:00", "10:00"))
    assert not _problems(text)
    overlapping = BASE + "change_windows:\n" + _window("late", "[fri]", "22:00", "02:00") + (
        _window("early", "[sat]", "01:00", "05:00"))
    assert [p.code for p in _problems(overlapping)] == ["PACK_OVERLAPPING_WINDOWS"]


def test_default_and_sample_packs_are_clean() -> None:
    assert validate_default().issues == []
    result = _invoke("policy", "validate", str(SAMPLE_PACK))
    assert result.exit_code == 0, result.output
    assert "valid (0 errors, 0 warnings)" in result.output
    assert _invoke("policy", "validate").exit_code == 0


def test_validate_prints_one_line_per_problem_and_exits_1(tmp_path: Path) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(BASE + "timezon: UTC\n", "utf-8")
    result = _invoke("policy", "validate", str(pack))
    assert result.exit_code == 1
    line = f"{pack}:9:1: PACK_UNKNOWN_KEY unknown key `timezon` in the pack " \
           "(did you mean `timezone`?)"
    assert line in result.output.splitlines()
    assert "invalid (1 error, 0 warnings)" in result.output


def test_validate_json_lists_each_issue_with_its_location(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(BASE, "utf-8")
    (tmp_path / "bad.yaml").write_text(_rule(effect="NONE") + "timezon: UTC\n", "utf-8")
    result = _invoke("policy", "validate", "--format", "json", str(tmp_path))
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert (out["valid"], out["errors"], out["warnings"]) == (False, 1, 1)
    bad, good = out["packs"]
    assert good == {"source": str(tmp_path / "good.yaml"), "valid": True, "errors": 0,
                    "warnings": 0, "issues": []}
    assert [(i["code"], i["severity"], i["effect"], i["location"]["line"])
            for i in bad["issues"]] == [("PACK_RULE_NOT_ENFORCED", "MEDIUM", "NONE", 13),
                                        ("PACK_UNKNOWN_KEY", "HIGH", "DENY", 16)]
    assert bad["issues"][1]["location"] == {"file": str(tmp_path / "bad.yaml"), "line": 16,
                                            "column": 1, "path": ["timezon"]}
    strict = json.loads(_invoke("policy", "validate", "--format", "json", "--strict",
                                str(tmp_path / "bad.yaml")).output)
    assert strict["packs"][0]["issues"][0]["effect"] == "DENY"
    assert _invoke("policy", "validate", "--format", "json", str(SAMPLE_PACK)).exit_code == 0


def test_warnings_alone_exit_0_unless_strict(tmp_path: Path) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(_rule(effect="NONE"), "utf-8")
    result = _invoke("policy", "validate", str(pack))
    assert result.exit_code == 0, result.output
    assert "PACK_RULE_NOT_ENFORCED warning: " in result.output
    assert _invoke("policy", "validate", "--strict", str(pack)).exit_code == 1


def test_validate_a_directory_and_unreadable_input(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(BASE, "utf-8")
    (tmp_path / "bad.yaml").write_text(BASE + "timezon: UTC\n", "utf-8")
    result = _invoke("policy", "validate", str(tmp_path))
    assert result.exit_code == 1
    assert "bad.yaml:9:1: PACK_UNKNOWN_KEY" in result.output
    assert _invoke("policy", "validate", str(tmp_path / "missing.yaml")).exit_code == 2
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    result = _invoke("policy", "validate", str(binary))
    assert result.exit_code == 2
    assert "PACK_UNREADABLE" in result.output
    assert _invoke("policy", "validate", str(tmp_path / "empty_dir_missing")).exit_code == 2


def test_every_lint_code_is_documented_with_its_severity_and_effect() -> None:
    text = (REPO / "docs" / "policy.md").read_text("utf-8")
    section = text.split("## Validating and testing packs", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and re.fullmatch(r"`PACK_[A-Z_]+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(LINT_CODES)
    for code, spec in LINT_CODES.items():
        _, kind, severity, effect, meaning = rows[code][:5]
        assert (kind, severity, effect) == (
            "warning" if spec.severity != "HIGH" else "error", spec.severity, spec.effect), code
        assert meaning, code


# -- stage0 policy test ---------------------------------------------------------------------------


def test_every_worked_example_passes_with_the_default_pack() -> None:
    files = sorted(str(p) for p in examples_dir().glob("*.json"))
    assert files
    result = _invoke("policy", "test", *files)
    assert result.exit_code == 0, result.output
    assert f"{len(files)} passed, 0 failed" in result.output
    assert result.output.count("PASS  ") == len(files)


def test_the_sample_suite_passes_against_the_sample_pack() -> None:
    result = _invoke("policy", "test", str(SAMPLE_SUITE), "--policy", str(SAMPLE_PACK))
    assert result.exit_code == 0, result.output
    cases = load_suite(SAMPLE_SUITE)
    assert len(cases) >= 5
    assert f"{len(cases)} passed, 0 failed" in result.output
    assert "policy acme-strict@1.1.0" in result.output


def test_a_failing_case_prints_its_diff_and_exits_1() -> None:
    # The sample suite expects the sample pack's tightening; the default pack lacks it.
    result = _invoke("policy", "test", str(SAMPLE_SUITE))
    assert result.exit_code == 1
    out = result.output
    assert re.search(r"^FAIL  a payout above 10,000 waits for finance review  .*:\d+$", out, re.M)
    assert "      verdict: expected DEFER, got ALLOW" in out
    assert "      missing issues: LARGE_PAYOUT (got: " in out
    assert re.search(r"^\d+ passed, [1-9]\d* failed$", out, re.M)


def test_issues_exclude_and_buckets_are_diffed(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        """\
cases:
  - name: excluded code present
    evaluated_at: "2026-03-16T10:00:00Z"
    request: {goal: Export the invoices of another tenant,
              context: {tenant_id: acme, target_tenants: [globex]}}
    expect:
      issues_exclude: [CROSS_TENANT_ACTION]
      buckets_include: [money_movement]
""",
        "utf-8",
    )
    result = _invoke("policy", "test", str(suite))
    assert result.exit_code == 1
    assert "unexpected issues: CROSS_TENANT_ACTION" in result.output
    assert "missing buckets: money_movement (got: none)" in result.output
    assert "0 passed, 1 failed" in result.output


def test_an_invalid_request_is_a_failure(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text('cases:\n  - name: no goal\n    evaluated_at: "2026-03-16T10:00:00Z"\n'
                     "    request: {tools: [x]}\n    expect: {verdict: DENY}\n", "utf-8")
    result = _invoke("policy", "test", str(suite))
    assert result.exit_code == 1
    assert "error: invalid request" in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cases: {}\n", "`cases` must be a list"),
        ("cases: []\n", "no cases"),
        ("- 1\n", "a suite is a mapping"),
        ("cases:\n  - {name: x, request: {goal: a}, expect: {verdict: DENY}}\n", "evaluated_at"),
        ('cases:\n  - {name: x, evaluated_at: "2026-01-01T00:00:00Z", request: {goal: a},\n'
         "     expect: {verdit: DENY}}\n", "did you mean `verdict`?"),
        ('cases:\n  - {name: x, evaluated_at: "2026-01-01T00:00:00Z", request: {goal: a},\n'
         "     expect: {verdict: MAYBE}}\n", "`expect.verdict` must be one of"),
        ("cases: [\n", "not valid YAML"),
    ],
)
def test_malformed_suites_are_usage_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SuiteError, match=re.escape(message)):
        parse_suite(text, source="suite.yaml")
    suite = tmp_path / "suite.yaml"
    suite.write_text(text, "utf-8")
    result = _invoke("policy", "test", str(suite))
    assert result.exit_code == 2
    assert message in result.output


def test_unreadable_suite_or_pack_and_usage_exit_2(tmp_path: Path) -> None:
    assert _invoke("policy", "test").exit_code == 2
    assert _invoke("policy", "test", str(tmp_path / "missing.yaml")).exit_code == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{", "utf-8")
    result = _invoke("policy", "test", str(bad))
    assert result.exit_code == 2
    assert "not valid JSON" in result.output
    pack = tmp_path / "pack.yaml"
    pack.write_text(BASE + "timezon: UTC\n", "utf-8")
    result = _invoke("policy", "test", str(SAMPLE_SUITE), "--policy", str(pack))
    assert result.exit_code == 2
    assert "PACK_UNKNOWN_KEY" in result.output


def test_suite_cases_carry_their_line_and_run_on_fresh_engines() -> None:
    cases = load_suite(SAMPLE_SUITE)
    assert all(c.line is not None for c in cases)
    single = load_suite(next(iter(sorted(examples_dir().glob("*.json")))))
    assert len(single) == 1
    assert single[0].line is None
    report = run_suites([SAMPLE_SUITE, SAMPLE_SUITE], load_policy(SAMPLE_PACK))
    assert report.ok
    assert report.passed == 2 * len(cases)
