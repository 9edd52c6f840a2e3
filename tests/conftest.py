"""Shared fixtures and the one loader of the worked examples."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stage0.policy import CompiledPolicy, load_policy

REPO = Path(__file__).resolve().parent.parent
VENDORED_EXAMPLES = REPO / "examples"
SHARED_EXAMPLES = REPO.parent / "shared" / "examples"


def examples_dir() -> Path:
    """The contract's examples: ``$STAGE0_EXAMPLES``, else ``../shared/examples``, else the copy."""
    env = os.environ.get("STAGE0_EXAMPLES")
    if env:
        return Path(env)
    return SHARED_EXAMPLES if SHARED_EXAMPLES.is_dir() else VENDORED_EXAMPLES


@dataclass(frozen=True)
class Example:
    name: str
    path: Path
    request: dict[str, Any]
    evaluated_at: str
    expect: dict[str, Any]

    def check(self, body: dict[str, Any]) -> None:
        """Assert a response body meets the example's expectations."""
        codes = [i["code"] for i in body["issues"]]
        exp = self.expect
        if "verdict" in exp:
            assert body["verdict"] == exp["verdict"], (self.name, body["reason"])
        if "decision" in exp:
            assert body["decision"] == exp["decision"], self.name
        for code in exp.get("issues_include", []):
            assert code in codes, (self.name, code, codes)
        for code in exp.get("issues_exclude", []):
            assert code not in codes, (self.name, code, codes)
        for bucket in exp.get("buckets_include", []):
            assert bucket in body["buckets"], (self.name, bucket, body["buckets"])


def load_examples() -> list[Example]:
    found = []
    for path in sorted(examples_dir().glob("*.json")):
        doc = json.loads(path.read_text("utf-8"))
        found.append(
            Example(doc["name"], path, doc["request"], doc["evaluated_at"], doc["expect"])
        )
    assert found, f"no examples found in {examples_dir()}"
    return found


EXAMPLES = load_examples()


@pytest.fixture(scope="session")
def policy() -> CompiledPolicy:
    return load_policy()
