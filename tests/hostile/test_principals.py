"""Disguised principals (issue #17, item 5): the requester can never approve its own request.

An agent's key asks on behalf of ``context.actor_id``; that actor's own approver key must be
refused (403 ``SELF_APPROVAL``) however the id is spelled: with a zero-width space, a BOM, a
soft hyphen, full-width letters, other case or surrounding space. Principals are compared after
the canonicalisation of names (stage0.contract.names.canonical_principal); a control character
in ``actor_id`` is refused with a 422.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from stage0.contract.names import canonical_principal
from tests.hostile.conftest import Tally
from tests.service.conftest import Api, running_app

PAYOUT = {
    "goal": "Release the manual payout for invoice 2231",
    "success_criteria": ["The vendor is paid"],
    "tools": ["payments.create_payout"],
    "side_effects": ["money movement"],
    "constraints": ["approval required", "max_records: 1"],
    "context": {"environment": "production"},
}
ALICE_SPELLINGS = [
    "alice", "alice\u200b", "\u200balice", "al\u200dice", "alice\ufeff", "al\u00adice",
    "ALICE", " Alice ", "\uff41\uff4c\uff49\uff43\uff45", "alice\u00a0", "\u2060alice\u2060",
    "a\u200bl\u200bi\u200bc\u200be", "alice\u202e", "\u3000alice",
]


def _vote(api: Api, secret: str, approval_id: str) -> httpx.Response:
    return api.client.post(f"/v1/approvals/{approval_id}/approve", json={"reason": "ok"},
                           headers={"x-api-key": secret})


def _ask(api: Api, agent: str, actor: str, n: int) -> Any:
    """A fresh approval request (distinct arguments, so a distinct digest) for ``actor``."""
    response = api.check({**PAYOUT, "arguments": {"invoice": n},
                          "context": {**PAYOUT["context"], "actor_id": actor}}, key=agent)
    assert response.status_code == 200, response.text
    return response.json()["approval"]["approval_id"]


@pytest.mark.parametrize("spelling", ALICE_SPELLINGS)
def test_canonical_principal_sees_alice(spelling: str) -> None:
    assert canonical_principal(spelling) == "alice"


def test_a_disguised_actor_id_cannot_approve_its_own_request(tmp_path: Path) -> None:
    with running_app(f"sqlite:///{tmp_path / 'stage0.db'}") as api:
        agent = api.new_key(scopes=["check"], principal="agent-7")
        alice = api.new_key(scopes=["approve"], principal="alice")
        dana = api.new_key(scopes=["approve"], principal="dana")
        tally = Tally()
        for n, spelling in enumerate(ALICE_SPELLINGS):
            aid = _ask(api, agent, spelling, n)
            refused = _vote(api, alice, aid)
            answer = refused.json()
            tally.add(spelling, "ALLOW" if refused.status_code == 200 else
                      answer.get("code", str(refused.status_code)))
        assert tally.allowed == [], f"alice approved her own request as {tally.allowed!r}"
        assert tally.outcomes == {"SELF_APPROVAL": len(ALICE_SPELLINGS)}
        # someone else still can
        aid = _ask(api, agent, "alice\u200b", 999)
        assert _vote(api, dana, aid).json()["status"] == "approved"


@pytest.mark.parametrize("actor", ["alice\x00", "ali\nce", "alice\x7f", "\x1balice", "alice\x85"])
def test_a_control_character_in_actor_id_is_refused(tmp_path: Path, actor: str) -> None:
    with running_app(f"sqlite:///{tmp_path / 'stage0.db'}") as api:
        response = api.check({**PAYOUT, "context": {**PAYOUT["context"], "actor_id": actor}})
        assert response.status_code == 422
        [error] = response.json()["errors"]
        assert (error["field"], error["type"]) == ("context.actor_id",
                                                   "principal_control_character")
        assert f"U+{ord(next(c for c in actor if not c.isprintable())):04X}" in error["message"]


def test_a_disguised_key_principal_is_the_same_principal(tmp_path: Path) -> None:
    """The other way round: the approver's key carries the disguise."""
    with running_app(f"sqlite:///{tmp_path / 'stage0.db'}") as api:
        agent = api.new_key(scopes=["check"], principal="agent-7")
        twin = api.new_key(scopes=["approve"], principal="Alice\u200b")
        aid = _ask(api, agent, "alice", 1)
        refused = _vote(api, twin, aid)
        assert (refused.status_code, refused.json()["code"]) == (403, "SELF_APPROVAL")
