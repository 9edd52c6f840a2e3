"""A request pinned to a held pack version: that version decides, unless the active pack is
stricter for the action (compared with the shared verdict ranking)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stage0.engine import Engine
from stage0.policy import load_policy
from stage0.policy.loader import default_pack_text
from stage0.testing import FixedClock, SequentialIds
from tests.helpers import WEEKDAY_10, request

PAUSE = (
    "rules:\n  - id: NO_TICKET_SUMMARIES\n    when: \"'ticket_search' in tools\"\n"
    "    effect: {effect}\n"
    "    message: ticket summaries are paused\n    remediation: wait for the migration\n"
)


def _pack(tmp_path: Path, version: str, effect: str | None) -> Path:
    text = default_pack_text().replace("version: 1.0.0", f"version: {version}")
    if effect is not None:
        text += PAUSE.format(effect=effect)
    path = tmp_path / f"v{version}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("active", "held", "decides", "verdict"),
    [
        (None, "DENY", "1.0.0", "DENY"),  # the pin is stricter: it decides
        (None, "DEFER", "1.0.0", "DEFER"),
        ("DEFER", None, "2.0.0", "DEFER"),  # the active pack is stricter: it decides
        ("DENY", "DEFER", "2.0.0", "DENY"),
        ("DEFER", "DEFER", "1.0.0", "DEFER"),  # as strict: the pin decides
        ("DEFER", "DENY", "1.0.0", "DENY"),
    ],
)
def test_a_pin_never_loosens(tmp_path: Path, active: str | None, held: str | None,
                             decides: str, verdict: str) -> None:
    engine = Engine(load_policy(_pack(tmp_path, "2.0.0", active)),
                    held=(load_policy(_pack(tmp_path, "1.0.0", held)),),
                    clock=FixedClock(WEEKDAY_10), ids=SequentialIds())
    decision = engine.check(request(policy_pack_version="1.0.0"))
    assert (decision.body["policy_version"], decision.verdict) == (
        f"stage0-policy-pack@{decides}", verdict)
    tightened = "POLICY_PIN_TIGHTENED" in decision.issue_codes
    assert tightened is (decides == "2.0.0")
