"""Structured validation errors: one exception naming every bad field."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from stage0.contract.codes import CODES
from stage0.contract.issues import Issue


@dataclass(frozen=True, slots=True)
class FieldError:
    """One bad field: its dotted path (``context.approved_at``), what was wrong, and a type tag."""

    field: str
    message: str
    type: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "type": self.type}


class FieldPathError(ValueError):
    """A validator's error about a nested value: ``field`` is the value's own dotted path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class RequestValidationError(ValueError):
    """The request does not match the contract. Never becomes an ALLOW.

    ``errors`` lists every bad field; ``issue`` is the single ``REQUEST_INVALID`` issue
    that surfaces (CLI, HTTP 422) report.
    """

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__(self.summary())

    def summary(self) -> str:
        parts = [f"`{e.field}`: {e.message}" for e in self.errors]
        return "invalid request: " + "; ".join(parts)

    @property
    def issue(self) -> Issue:
        return CODES["REQUEST_INVALID"].issue(self.summary())

    def to_dict(self) -> dict[str, object]:
        return {
            "detail": self.summary(),
            "errors": [e.to_dict() for e in self.errors],
            "issues": [self.issue.to_dict()],
        }

    @classmethod
    def single(cls, field: str, message: str, type_: str = "value_error") -> RequestValidationError:
        return cls([FieldError(field, message, type_)])

    @classmethod
    def from_pydantic(cls, exc: ValidationError) -> RequestValidationError:
        return cls([_field_error(d) for d in exc.errors(include_url=False, include_input=False)])


def _field_error(detail: ErrorDetails) -> FieldError:
    cause = detail.get("ctx", {}).get("error")
    if isinstance(cause, FieldPathError):
        return FieldError(cause.field, str(cause), detail["type"])
    loc = ".".join(str(p) for p in detail["loc"]) or "(body)"
    message = detail["msg"]
    if message.startswith(("Value error, ", "Assertion failed, ")):
        message = message.split(", ", 1)[1]
    return FieldError(loc, message, detail["type"])
