"""Every worked example passes through the engine and the CLI, from one loader."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stage0.cli.main import EXIT_CODES, cli
from stage0.contract import CheckResponse
from stage0.testing import make_engine
from tests.conftest import EXAMPLES, SHARED_EXAMPLES, VENDORED_EXAMPLES, Example

IDS = [e.name for e in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=IDS)
def test_engine(example: Example) -> None:
    decision = make_engine(example.evaluated_at).check(example.request)
    example.check(decision.body)
    CheckResponse.model_validate_json(decision.to_json())  # the body matches the schema


@pytest.mark.parametrize("example", EXAMPLES, ids=IDS)
def test_cli(example: Example, tmp_path: object) -> None:
    result = CliRunner().invoke(
        cli, ["check", "-", "--at", example.evaluated_at], input=json.dumps(example.request)
    )
    body = orjson.loads(result.stdout)
    example.check(body)
    assert result.exit_code == EXIT_CODES[body["verdict"]]


@pytest.mark.parametrize("example", EXAMPLES, ids=IDS)
def test_cli_reads_example_documents(example: Example) -> None:
    """`stage0 check examples/x.json` evaluates at the example's own `evaluated_at`."""
    result = CliRunner().invoke(cli, ["check", str(example.path)])
    body = orjson.loads(result.stdout)
    example.check(body)
    assert body["evaluated_at"] == pytest.approx(
        make_engine(example.evaluated_at).check(example.request).body["evaluated_at"]
    )


def test_console_script_runs_an_example() -> None:
    example = next(e for e in EXAMPLES if e.expect.get("verdict") == "DEFER")
    proc = subprocess.run(
        [sys.executable, "-m", "stage0", "check", str(example.path), "--format", "text"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 10, proc.stderr
    assert "DEFER" in proc.stdout


def test_vendored_examples_match_the_contract() -> None:
    if not SHARED_EXAMPLES.is_dir():
        pytest.skip("../shared/examples is not beside this checkout")
    shared = {p.name: p.read_bytes() for p in SHARED_EXAMPLES.glob("*.json")}
    vendored = {p.name: p.read_bytes() for p in VENDORED_EXAMPLES.glob("*.json")}
    assert vendored == shared, "examples/ drifted from ../shared/examples; copy them again"


def test_decisions_are_reproducible() -> None:
    example = EXAMPLES[0]
    first = make_engine(example.evaluated_at).check(example.request).to_json()
    second = make_engine(example.evaluated_at).check(example.request).to_json()
    assert first == second


def test_every_test_reads_the_examples_through_the_one_loader() -> None:
    """A test that finds the contract's examples on its own (``../shared/examples``) breaks in a
    clone with nothing beside it; ``tests.conftest`` (``EXAMPLES``, ``examples_dir()``) is the
    one way, falling back to the vendored copy."""
    tests = Path(__file__).resolve().parent
    own = re.compile(r"""["']shared["']\s*/\s*["']examples|shared/examples["']""")
    offenders = [str(p.relative_to(tests)) for p in sorted(tests.rglob("*.py"))
                 if p.name != "conftest.py" or p.parent != tests
                 if p != Path(__file__).resolve() and own.search(p.read_text("utf-8"))]
    assert not offenders, f"find the examples through tests.conftest.EXAMPLES: {offenders}"
