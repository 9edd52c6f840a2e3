"""Remediation hints: "did you mean", the allowed words, the keys a mapping may have."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

from pydantic import BaseModel

from stage0.policy.cel import VARIABLES, CelRuleError
from stage0.policy.lint.codes import YamlPath
from stage0.policy.schema import PackDocument


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def one_of(choices: Iterable[str]) -> str | None:
    names = list(choices)
    if not names or len(names) > 12:
        return None
    return "one of " + ", ".join(f"`{n}`" for n in names)


def allowed_keys(path: YamlPath) -> list[str]:
    """The field names of the model at ``path`` in :class:`PackDocument` (empty if none)."""
    target: Any = PackDocument
    for part in path:
        target = _strip_optional(target)
        if isinstance(target, type) and issubclass(target, BaseModel):
            fields = target.model_fields
            if not isinstance(part, str) or part not in fields:
                return []
            target = fields[part].annotation
        elif typing.get_origin(target) is dict:
            target = typing.get_args(target)[1]
        elif typing.get_origin(target) is list:
            target = typing.get_args(target)[0]
        else:
            return []
    target = _strip_optional(target)
    if isinstance(target, type) and issubclass(target, BaseModel):
        return list(target.model_fields)
    return []


def _strip_optional(target: Any) -> Any:
    args = [a for a in typing.get_args(target) if a is not type(None)]
    if typing.get_origin(target) in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else target
    return target


@lru_cache(maxsize=1)
def zones() -> tuple[str, ...]:
    return tuple(sorted(available_timezones()))


def cel_hint(error: CelRuleError) -> str:
    """The closest variable to an undeclared one, else the variables a condition may use."""
    if error.undeclared:
        guess = did_you_mean(error.undeclared.split(".")[0], VARIABLES)
        if guess:
            return guess
    return "variables: " + ", ".join(f"`{v}`" for v in VARIABLES)


__all__ = ["allowed_keys", "cel_hint", "did_you_mean", "one_of", "zones"]
