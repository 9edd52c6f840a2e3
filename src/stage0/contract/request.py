"""The ``POST /check`` request (CONTRACT section 1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stage0.contract.errors import FieldPathError, RequestValidationError
from stage0.contract.names import name_problem, principal_problem
from stage0.contract.strict_json import check_strict

MAX_BODY_BYTES = 1_000_000
MAX_LIST_ITEMS = 200
MAX_ITEM_CHARS = 2_000
MAX_GOAL_CHARS = 8_000

ApprovalStatus = Literal["approved", "pending", "missing", "none", "rejected"]


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _checked_name(value: str) -> str:
    """Tool names and side effects are identifiers (stage0.contract.names): a control character
    or non-ASCII whitespace is refused, and after NFKC normalisation and removal of invisible
    format characters what remains must be ASCII, so look-alike letters (a Cyrillic a, U+0430,
    in ``payout``) cannot slip a name past the classifier. The value is kept as sent; the
    engine classifies its canonical form."""
    problem = name_problem(value)
    if problem is not None:
        raise PydanticCustomError(*problem)
    return value


def _checked_environment(value: str) -> str:
    """An environment follows the name rules, except that a blank one is no environment."""
    problem = name_problem(value)
    if problem is not None and problem[0] != "name_blank":
        raise PydanticCustomError(*problem)
    return value


def _checked_principal(value: str) -> str:
    problem = principal_problem(value)
    if problem is not None:
        raise PydanticCustomError(*problem)
    return value


Item = Annotated[str, Field(max_length=MAX_ITEM_CHARS)]
ItemList = Annotated[list[Item], Field(max_length=MAX_LIST_ITEMS)]
Name = Annotated[str, Field(max_length=MAX_ITEM_CHARS), AfterValidator(_checked_name)]
NameList = Annotated[list[Name], Field(max_length=MAX_LIST_ITEMS)]
Environment = Annotated[str, Field(max_length=MAX_ITEM_CHARS), AfterValidator(_checked_environment)]
Principal = Annotated[str, Field(max_length=MAX_ITEM_CHARS), AfterValidator(_checked_principal)]
Timestamp = Annotated[datetime, Field(description="ISO-8601; a value without a zone is UTC")]


MAX_ARGUMENT_DEPTH = 32
SAFE_INTEGER = 2**53 - 1


def _check_json_domain(value: Any, path: str, depth: int) -> None:
    """Values Stage0 hashes, logs and echoes must have one exact JSON form (RFC 8785, I-JSON):
    integers within +-(2**53 - 1) and nesting at most 32 deep."""
    if depth > MAX_ARGUMENT_DEPTH:
        raise FieldPathError(path, f"nests deeper than {MAX_ARGUMENT_DEPTH} levels")
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return
    if isinstance(value, int):
        if not -SAFE_INTEGER <= value <= SAFE_INTEGER:
            raise FieldPathError(path, "an integer outside +-(2**53 - 1); send it as a string")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_json_domain(v, f"{path}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_domain(v, f"{path}.{i}", depth + 1)


class Context(BaseModel):
    """Runtime facts about the action. Unknown keys are kept and visible to policies."""

    model_config = ConfigDict(extra="allow", strict=True)

    actor_role: Item | None = None
    actor_id: Principal | None = None
    environment: Environment | None = None
    approval_status: Annotated[ApprovalStatus | None, BeforeValidator(_lower)] = None
    approved_by: Item | None = None
    approved_at: Timestamp | None = None
    approval_id: Item | None = None
    ticket_id: Item | None = None
    rollback_plan: StrictBool | Item | None = None
    mfa_verified: StrictBool | None = None
    mfa_verified_at: Timestamp | None = None
    resource_scope: Item | None = None
    target_resources: ItemList | Item | None = None
    record_count: Annotated[int, Field(ge=0, le=2**53 - 1)] | None = None
    request_channel: Item | None = None
    run_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    current_iteration: Annotated[int, Field(ge=0, le=2**53 - 1)] | None = None
    elapsed_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    current_tool: Name | None = None
    recent_tools: Annotated[list[Name], Field(max_length=10_000)] | None = None
    cumulative_cost_usd: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    cost_usd: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        default=None,
        description="Cost of this step; added to the run's cumulative cost in the run state",
    )
    active_mcp_servers: ItemList | None = None
    tenant_id: Item | None = None
    target_tenants: ItemList | None = None

    @field_validator("approved_at", "mfa_verified_at", mode="after")
    @classmethod
    def _zone(cls, value: datetime | None) -> datetime | None:
        return _as_utc(value)

    @model_validator(mode="after")
    def _extras_in_json_domain(self) -> Context:
        for key, value in (self.model_extra or {}).items():
            _check_json_domain(value, f"context.{key}", 1)
        return self


class CheckRequest(BaseModel):
    """A proposed action, sent before it executes. Unknown top-level fields are kept, not used."""

    model_config = ConfigDict(extra="allow", strict=True)

    goal: Annotated[str, Field(min_length=1, max_length=MAX_GOAL_CHARS)]
    success_criteria: ItemList | None = None
    constraints: ItemList | None = None
    tools: NameList | None = None
    side_effects: NameList | None = None
    context: Context | None = None
    pro: StrictBool | None = None
    policy_pack_version: Item | None = None
    environment: Environment | None = None
    arguments: dict[str, Any] | None = None

    @field_validator("goal", mode="after")
    @classmethod
    def _goal_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain a non-blank sentence")
        return value

    @field_validator("arguments", mode="after")
    @classmethod
    def _arguments_are_canonicalizable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            _check_json_domain(value, "arguments", 0)
        return value

    @model_validator(mode="after")
    def _extras_in_json_domain(self) -> CheckRequest:
        for key, value in (self.model_extra or {}).items():
            _check_json_domain(value, key, 0)
        return self

    @field_validator("environment", mode="after")
    @classmethod
    def _environment_alias(cls, value: str | None, info: ValidationInfo) -> str | None:
        context = info.data.get("context")
        ctx_env = context.environment if isinstance(context, Context) else None
        if (
            value is not None
            and ctx_env is not None
            and value.strip().lower() != ctx_env.strip().lower()
        ):
            raise ValueError(
                f"`environment` ({value!r}) contradicts `context.environment` ({ctx_env!r}); "
                "send one, or the same value in both"
            )
        return value

    @property
    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or ())


_TEXT = (bytes, str)


def parse_request(body: bytes | str | dict[str, Any]) -> CheckRequest:
    """Validate a request body (bytes, text or an already-parsed mapping).

    Raises :class:`RequestValidationError` naming every bad field.
    """
    try:
        if isinstance(body, _TEXT):
            try:
                raw = body.encode() if isinstance(body, str) else body
            except UnicodeEncodeError as exc:
                raise RequestValidationError.single(
                    "(body)", f"not valid Unicode text: {exc.reason}", "unicode_error"
                ) from None
            if len(raw) > MAX_BODY_BYTES:
                raise RequestValidationError.single(
                    "(body)",
                    f"body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}",
                    "too_large",
                )
            check_strict(raw)  # finite numbers, unique member names (contract/strict_json.py)
            # What CheckRequest.model_validate_json(raw) does, without its argument handling.
            return CheckRequest.__pydantic_validator__.validate_json(raw)  # type: ignore[no-any-return]
        if not isinstance(body, dict):
            raise RequestValidationError.single(
                "(body)", "the request must be a JSON object", "model_type"
            )
        # One path for every surface: a mapping is encoded and validated as JSON, so that
        # timestamps, strictness and the size limit behave exactly as they do over HTTP.
        try:
            encoded = orjson.dumps(body)
        except orjson.JSONEncodeError:
            encoded = json.dumps(body, allow_nan=False).encode()  # integers beyond 64 bits
        return parse_request(encoded)
    except ValidationError as exc:
        raise RequestValidationError.from_pydantic(exc) from None
    except RequestValidationError:
        raise
    except (TypeError, ValueError) as exc:
        raise RequestValidationError.single("(body)", f"not encodable as JSON: {exc}") from None


def parse_instant(text: str) -> datetime:
    """An ISO-8601 instant (``2026-03-17T10:00:00Z``); a value without a zone is UTC.

    Raises ``ValueError`` naming the text when it is not one.
    """
    try:
        value = datetime.fromisoformat(text.strip().upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"`{text}` is not an ISO-8601 time such as 2026-03-17T10:00:00Z") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
