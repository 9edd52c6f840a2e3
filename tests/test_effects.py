"""The one effect ranking (``stage0.contract.effects``): DENY > DEFER > NONE, and verdicts alike."""

from __future__ import annotations

from itertools import permutations, product
from typing import get_args

import pytest

from stage0.contract.effects import (
    EFFECT_RANK,
    VERDICT_OF,
    VERDICT_RANK,
    is_stricter,
    is_stricter_verdict,
    stricter,
    strictest,
)
from stage0.contract.issues import EffectName
from stage0.contract.response import Verdict

EFFECTS: tuple[EffectName, ...] = ("NONE", "DEFER", "DENY")  # loosest first
VERDICTS: tuple[Verdict, ...] = ("ALLOW", "DEFER", "DENY")


def test_the_ranking() -> None:
    assert sorted(EFFECT_RANK, key=EFFECT_RANK.__getitem__) == list(EFFECTS)
    assert set(EFFECT_RANK) == set(get_args(EffectName))
    assert sorted(VERDICT_RANK, key=VERDICT_RANK.__getitem__) == list(VERDICTS)
    assert set(VERDICT_RANK) == set(get_args(Verdict))


def test_a_verdict_ranks_as_its_effect() -> None:
    assert set(VERDICT_OF) == set(EFFECTS)
    for effect, verdict in VERDICT_OF.items():
        assert VERDICT_RANK[verdict] == EFFECT_RANK[effect]


def test_the_rankings_are_read_only() -> None:
    with pytest.raises(TypeError):
        EFFECT_RANK["ALLOW"] = 0  # type: ignore[index]


@pytest.mark.parametrize(("a", "b"), list(product(EFFECTS, repeat=2)))
def test_stricter(a: EffectName, b: EffectName) -> None:
    expected = a if EFFECTS.index(a) >= EFFECTS.index(b) else b
    assert stricter(a, b) == expected
    assert is_stricter(a, b) is (EFFECTS.index(a) > EFFECTS.index(b))


@pytest.mark.parametrize(("a", "b"), list(product(VERDICTS, repeat=2)))
def test_is_stricter_verdict(a: str, b: str) -> None:
    assert is_stricter_verdict(a, b) is (VERDICTS.index(a) > VERDICTS.index(b))


def test_strictest() -> None:
    assert strictest([]) == "NONE"
    for n in range(1, 4):
        for effects in permutations(EFFECTS, n):
            assert strictest(effects) == max(effects, key=EFFECTS.index)
    assert strictest(iter(["DEFER", "NONE", "DEFER"])) == "DEFER"


def test_a_name_that_is_not_an_effect_is_refused() -> None:
    assert "ALLOW" not in EFFECT_RANK  # test with `in` before ranking untrusted text
    with pytest.raises(KeyError):
        is_stricter("ALLOW", "NONE")
    with pytest.raises(KeyError):
        stricter("NONE", "BLOCK")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        is_stricter_verdict("NO_GO", "ALLOW")
