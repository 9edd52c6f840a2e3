"""The public AuthZEN interop scenarios, run against Stage0's AuthZEN front door.

The decision files in ``scenarios/`` are the interop's own (openid/authzen, see README.md):
each names a request and the decision every conforming PDP returns. ``interop-pack.yaml``
expresses the scenarios' policies as a Stage0 pack; this runner serves it (on SQLite and on
PostgreSQL, since each evaluation is a logged decision) and holds every answer to the file:

- every ``evaluation`` entry through ``POST /access/v1/evaluation``;
- every ``evaluations`` entry through ``POST /access/v1/evaluations``, after turning the file's
  older boxcar shape (``evaluations`` as an object keyed ``"1"``, ``"2"``; draft 1.1-preview)
  into AuthZEN 1.0's array, in key order;
- each subject's ``evaluation`` entries as one batch too, the subject as the default.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stage0.store import ledger
from tests.service.conftest import BACKENDS, Api, fresh_database, running_app

HERE = Path(__file__).resolve().parent
PACK = HERE / "interop-pack.yaml"
SCENARIOS = sorted((HERE / "scenarios").glob("*.json"))
USERS = {
    "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs": "rick",
    "CiRmZDE2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs": "morty",
    "CiRmZDI2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs": "summer",
    "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs": "beth",
    "CiRmZDQ2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs": "jerry",
}


@dataclass(frozen=True)
class Case:
    id: str
    request: dict[str, Any]
    expected: Any  # a bool (evaluation) or a list of bools (evaluations)


def _boxcar(request: dict[str, Any], expected: dict[str, Any]) -> tuple[dict[str, Any], list[bool]]:
    """A draft boxcar (``evaluations: {"1": {...}}``) as AuthZEN 1.0's array, in key order."""
    items = request["evaluations"]
    if isinstance(items, list):
        return request, [e["decision"] if isinstance(e, dict) else e for e in expected]
    keys = sorted(items, key=int)
    return ({**request, "evaluations": [items[k] for k in keys]},
            [expected[k]["decision"] for k in keys])


def _cases() -> tuple[list[Case], list[Case]]:
    single, batches = [], []
    for path in SCENARIOS:
        doc = json.loads(path.read_text("utf-8"))
        by_subject: dict[str, list[dict[str, Any]]] = {}
        for i, entry in enumerate(doc.get("evaluation", [])):
            req = entry["request"]
            who = USERS.get(req["subject"]["id"], req["subject"]["id"])
            single.append(Case(f"{path.stem}-{i:02d}-{who}-{req['action']['name']}", req,
                               entry["expected"]))
            by_subject.setdefault(req["subject"]["id"], []).append(entry)
        for i, entry in enumerate(doc.get("evaluations", [])):
            request, expected = _boxcar(entry["request"], entry["expected"])
            who = USERS.get(request["subject"]["id"], "?")
            batches.append(Case(f"{path.stem}-evaluations-{i}-{who}", request, expected))
        for sid, entries in by_subject.items():
            batches.append(Case(
                f"{path.stem}-batch-{USERS.get(sid, sid)}",
                {"subject": entries[0]["request"]["subject"],
                 "evaluations": [{k: v for k, v in e["request"].items() if k != "subject"}
                                 for e in entries]},
                [e["expected"] for e in entries]))
    return single, batches


SINGLE, BATCHES = _cases()


def test_the_vendored_scenarios_are_all_here() -> None:
    assert [p.name for p in SCENARIOS] == [
        "api-gateway-decisions.json", "todo-decisions-1.0-implementers-draft.json",
        "todo-decisions-1.1-preview.json"]
    assert len(SINGLE) == 25 + 40 + 40
    assert sum(1 for c in BATCHES if "-evaluations-" in c.id) == 3
    assert {c.expected for c in SINGLE} == {True, False}


@pytest.fixture(scope="module", params=BACKENDS)
def interop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[Api]:
    with fresh_database(request.param, tmp_path_factory.mktemp(request.param)) as url, \
            running_app(url, policy=str(PACK)) as api:
        yield api


@pytest.mark.parametrize("case", SINGLE, ids=lambda c: c.id)
def test_evaluation(interop: Api, case: Case) -> None:
    before = ledger.count(interop.store)
    r = interop.client.post("/access/v1/evaluation", json=case.request,
                            headers={"x-api-key": interop.key})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] is case.expected, body["context"]["reason"]
    assert body["context"]["verdict"] == ("ALLOW" if case.expected else "DENY")
    assert ledger.count(interop.store) == before + 1


@pytest.mark.parametrize("case", BATCHES, ids=lambda c: c.id)
def test_evaluations(interop: Api, case: Case) -> None:
    before = ledger.count(interop.store)
    r = interop.client.post("/access/v1/evaluations", json=case.request,
                            headers={"x-api-key": interop.key})
    assert r.status_code == 200, r.text
    answers = r.json()["evaluations"]
    assert [a["decision"] for a in answers] == case.expected, [
        a["context"]["reason"] for a in answers]
    assert ledger.count(interop.store) == before + len(case.expected)
