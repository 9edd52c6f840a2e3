"""Wire models of the ``/check`` contract: request, response, issues and their codes."""

from stage0.contract.codes import CODES, CodeSpec, Effect, Kind, Severity
from stage0.contract.errors import FieldError, RequestValidationError
from stage0.contract.issues import Issue
from stage0.contract.request import MAX_BODY_BYTES, CheckRequest, Context, parse_request
from stage0.contract.response import CheckResponse

__all__ = [
    "CODES",
    "MAX_BODY_BYTES",
    "CheckRequest",
    "CheckResponse",
    "CodeSpec",
    "Context",
    "Effect",
    "FieldError",
    "Issue",
    "Kind",
    "RequestValidationError",
    "Severity",
    "parse_request",
]
