"""The one ``Issue`` type used by the engine, validation errors and HTTP errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SeverityName = Literal["HIGH", "MEDIUM", "LOW"]
EffectName = Literal["DENY", "DEFER", "NONE"]


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding: a stable ``code`` and what it did to the verdict (``effect``)."""

    code: str
    severity: SeverityName
    message: str
    effect: EffectName
    remediation: str

    def to_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "effect": self.effect,
            "remediation": self.remediation,
        }
