"""How strict an issue's effect is: ``DENY`` > ``DEFER`` > ``NONE``. The one place it is written.

A verdict is the effect of the strictest issue (``NONE`` reads ``ALLOW``), so verdicts rank the
same way: ``DENY`` > ``DEFER`` > ``ALLOW``. The engine, the policy linter and replay all compare
through this module rather than keeping their own ordering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from stage0.contract.issues import EffectName
from stage0.contract.response import Verdict

EFFECT_RANK: Final[Mapping[str, int]] = MappingProxyType({"NONE": 0, "DEFER": 1, "DENY": 2})
"""Each effect's strictness; a name that is not an effect is not a key (test with ``in``)."""

VERDICT_OF: Final[Mapping[EffectName, Verdict]] = MappingProxyType(
    {"NONE": "ALLOW", "DEFER": "DEFER", "DENY": "DENY"})
"""The verdict an effect gives when it is the strictest one."""

VERDICT_RANK: Final[Mapping[str, int]] = MappingProxyType(
    {verdict: EFFECT_RANK[effect] for effect, verdict in VERDICT_OF.items()})
"""Each verdict's strictness, the rank of the effect it stands for."""


def is_stricter(a: str, b: str) -> bool:
    """Whether effect ``a`` is strictly stricter than effect ``b``. ``KeyError`` for a name
    that is not an effect."""
    return EFFECT_RANK[a] > EFFECT_RANK[b]


def stricter(a: EffectName, b: EffectName) -> EffectName:
    """The stricter of two effects (``a`` when they are equal)."""
    return b if EFFECT_RANK[b] > EFFECT_RANK[a] else a


def strictest(effects: Iterable[EffectName]) -> EffectName:
    """The strictest of ``effects``; ``NONE`` when there are none."""
    top: EffectName = "NONE"
    for effect in effects:
        if EFFECT_RANK[effect] > EFFECT_RANK[top]:
            top = effect
    return top


def is_stricter_verdict(a: str, b: str) -> bool:
    """Whether verdict ``a`` is strictly stricter than verdict ``b`` (so going from ``a`` to
    ``b`` loosens). ``KeyError`` for a name that is not a verdict."""
    return VERDICT_RANK[a] > VERDICT_RANK[b]
