"""The CLI: exit codes, formats, options and errors."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stage0 import __version__
from stage0.cli.main import cli
from tests.helpers import request


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (request(), 0),
        (request(constraints=["approval required"]), 10),
        (request(side_effects=["write"]), 20),
    ],
    ids=["allow", "defer", "deny"],
)
def test_exit_codes(body: dict[str, object], code: int) -> None:
    status, out, _ = run("check", "-", "--at", "2026-03-17T10:00:00Z", stdin=json.dumps(body))
    assert status == code
    assert orjson.loads(out)["verdict"] == {0: "ALLOW", 10: "DEFER", 20: "DENY"}[code]


def test_invalid_input_exits_2_with_every_field_named() -> None:
    status, out, err = run("check", "-", stdin=json.dumps({"goal": "", "tools": [3]}))
    assert status == 2
    assert out == ""
    error = orjson.loads(err)
    assert {e["field"] for e in error["errors"]} == {"goal", "tools.0"}
    assert error["issues"][0]["code"] == "REQUEST_INVALID"


def test_invalid_input_in_text_format() -> None:
    status, _, err = run("check", "-", "--format", "text", stdin="{not json")
    assert status == 2
    assert "invalid request" in err


def test_missing_file_and_bad_at_are_usage_errors(tmp_path: Path) -> None:
    assert run("check", str(tmp_path / "nope.json"))[0] == 2
    status, _, err = run("check", "-", "--at", "tuesday", stdin=json.dumps(request()))
    assert status == 2
    assert "ISO-8601" in err


def test_pro_flag_tightens() -> None:
    body = json.dumps(request(tools=["bash"]))
    assert run("check", "-", stdin=body)[0] == 0
    assert run("check", "-", "--pro", stdin=body)[0] == 20


def test_at_sets_the_evaluation_time() -> None:
    body = json.dumps(request(constraints=["business-hours only"]))
    assert run("check", "-", "--at", "2026-03-17T10:00:00Z", stdin=body)[0] == 0
    assert run("check", "-", "--at", "2026-03-21T10:00:00Z", stdin=body)[0] == 10


def test_text_format_is_readable() -> None:
    body = json.dumps(request(tools=["deploy.production"], constraints=["approval required"],
                              context={"environment": "production"}))
    status, out, _ = run("check", "-", "--format", "text", "--at", "2026-03-17T10:00:00Z",
                         stdin=body)
    assert status == 10
    for expected in ("DEFER", "APPROVAL_REQUIRED_PENDING", "fix:", "production_control_plane",
                     "stage0-policy-pack@1.0.0", "to move this forward"):
        assert expected in out


def test_a_broken_policy_fails_closed(tmp_path: Path) -> None:
    pack = tmp_path / "broken.yaml"
    pack.write_text("apiVersion: stage0/v1\nname: x\n")
    status, out, err = run("check", "-", "--policy", str(pack), stdin=json.dumps(request()))
    assert status == 20
    assert "policy error" in err
    body = orjson.loads(out)
    assert (body["verdict"], body["decision"]) == ("DENY", "ERROR")
    assert body["issues"][0]["code"] == "POLICY_NOT_LOADED"


def test_an_example_with_a_bad_evaluated_at_is_a_usage_error(tmp_path: Path) -> None:
    doc = tmp_path / "example.json"
    doc.write_text(json.dumps({"request": request(), "evaluated_at": "yesterday"}))
    status, _, err = run("check", str(doc))
    assert status == 2
    assert "evaluated_at" in err


def test_policy_show() -> None:
    status, out, _ = run("policy", "show")
    assert status == 0
    assert "stage0-policy-pack@1.0.0" in out
    assert "money_movement" in out
    status, out, _ = run("policy", "show", "--format", "json")
    summary = orjson.loads(out)
    assert summary["policy_version"] == "stage0-policy-pack@1.0.0"
    assert set(summary["buckets"]) == {"money_movement", "destructive_data",
                                       "production_control_plane"}


def test_policy_show_reports_a_broken_pack(tmp_path: Path) -> None:
    pack = tmp_path / "broken.yaml"
    pack.write_text("version: 1\n")
    status, _, err = run("policy", "show", "--policy", str(pack))
    assert status == 2
    assert "apiVersion" in err


@pytest.mark.parametrize("which", ["request", "response"])
def test_schema(which: str) -> None:
    status, out, _ = run("schema", which)
    assert status == 0
    schema = orjson.loads(out)
    assert "goal" in schema["properties"] or "verdict" in schema["properties"]


def test_version() -> None:
    status, out, _ = run("--version")
    assert status == 0
    assert __version__ in out
