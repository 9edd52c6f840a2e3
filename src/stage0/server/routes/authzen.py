"""The OpenID AuthZEN Authorization API 1.0, a second front door to the same decisions:
``POST /access/v1/evaluation``, ``POST /access/v1/evaluations`` and
``GET /.well-known/authzen-configuration`` (docs/authzen.md).

Each evaluation is one ``decide_check`` (``routes/check.py``) with this module's parser: the
same key, tenancy, scope, quotas, strict JSON, engine, approval request of a DEFER and
decision-log row as ``POST /check``, in the same order of checks. Nothing here decides or logs.

The mapping (an Access Evaluation request ``{subject, action, resource, context}`` to one
``CheckRequest``):

- ``action.name`` is the one tool; ``action.properties.side_effects``, ``constraints``,
  ``success_criteria`` and ``goal`` are the request fields of those names (a goal is written
  when none is sent);
- ``subject.id`` is ``context.actor_id``, ``subject.properties.role`` (a string) the
  ``actor_role`` unless the context sets one;
- ``resource`` ``type:id`` is ``context.resource_scope`` (unless the context sets one) and is
  added to ``context.target_resources``;
- the whole ``{subject, action, resource}`` is the request's ``arguments``: rules read it
  (``arguments.subject.properties.roles``), and it is bound into the action digest, so an
  approval granted for one subject, action and resource approves nothing else;
- ``context`` is the request's context, unknown keys included; ``context.approval.id`` (the
  access-request profile's re-evaluation) stands for ``context.approval_id``.

``decision`` is ``true`` for ALLOW only. DEFER and DENY are ``false``; a DEFER that opened an
approval request carries it in ``context.approval`` and ``context.access_request``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from stage0.contract import CheckRequest, RequestValidationError, parse_request
from stage0.contract.errors import FieldError
from stage0.contract.request import MAX_BODY_BYTES, MAX_GOAL_CHARS
from stage0.contract.strict_json import check_strict
from stage0.server.auth import source_of
from stage0.server.routes.check import decide_check
from stage0.server.state import State

Semantic = Literal["execute_all", "deny_on_first_deny", "permit_on_first_permit"]
SEMANTICS: tuple[Semantic, ...] = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
MAX_EVALUATIONS = 200
"""Evaluations in one ``/access/v1/evaluations`` request (each one is a decision, logged and
counted against the key's quotas like a ``/check``)."""
TUPLE_KEYS = ("subject", "action", "resource", "context")
_ACTION_FIELDS = ("side_effects", "constraints", "success_criteria", "goal")
_ENTITIES: dict[str, tuple[str, ...]] = {
    "subject": ("type", "id"), "action": ("name",), "resource": ("type", "id")}


def _error(field: str, message: str, type_: str = "value_error") -> RequestValidationError:
    return RequestValidationError.single(field, message, type_)


def load_body(raw: bytes) -> Any:
    """The body as JSON: strict (finite numbers, unique member names), at most 1 MB."""
    if len(raw) > MAX_BODY_BYTES:
        raise _error("(body)", f"body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}",
                     "too_large")
    if not raw.strip():
        raise _error("(body)", "the body is empty: send a JSON object", "missing")
    check_strict(raw)  # raises RequestValidationError naming the path
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # check_strict already refuses what orjson refuses
        raise _error("(body)", f"not JSON: {exc}", "json_invalid") from None


# -- one evaluation: AuthZEN -> CheckRequest ------------------------------------------------------


def _entity_errors(value: Any, name: str, prefix: str) -> list[FieldError]:
    """What is wrong with the ``subject``, ``action`` or ``resource`` of an evaluation."""
    path = f"{prefix}{name}"
    if value is None:
        return [FieldError(path, "is required", "missing")]
    if not isinstance(value, dict):
        return [FieldError(path, "must be an object", "model_type")]
    errors = []
    for key in _ENTITIES[name]:
        item = value.get(key)
        if item is None:
            errors.append(FieldError(f"{path}.{key}", "is required", "missing"))
        elif not isinstance(item, str):
            errors.append(FieldError(f"{path}.{key}", "must be a string", "string_type"))
        elif not item.strip():
            errors.append(FieldError(f"{path}.{key}", "must not be blank", "string_too_short"))
    props = value.get("properties")
    if props is not None and not isinstance(props, dict):
        errors.append(FieldError(f"{path}.properties", "must be an object", "model_type"))
    return errors


def check_body(evaluation: Any, prefix: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    """The ``/check`` body of one Access Evaluation request, and where each of its fields came
    from (a ``/check`` field path to the AuthZEN one, for error messages)."""
    if not isinstance(evaluation, dict):
        raise _error(prefix.rstrip(".") or "(body)", "must be a JSON object", "model_type")
    errors = [e for name in _ENTITIES
              for e in _entity_errors(evaluation.get(name), name, prefix)]
    context = evaluation.get("context")
    if context is not None and not isinstance(context, dict):
        errors.append(FieldError(f"{prefix}context", "must be an object", "model_type"))
    if errors:
        raise RequestValidationError(errors)
    subject, action, resource = (evaluation[name] for name in _ENTITIES)
    context = context or {}
    origin = {"tools": f"{prefix}action.name", "arguments": prefix.rstrip(".") or "(body)"}
    aprops = action.get("properties") or {}
    target = f"{resource['type']}:{resource['id']}"
    body: dict[str, Any] = {
        "goal": (f"Check whether {subject['type']} {subject['id']} may {action['name']} "
                 f"{resource['type']} {resource['id']}")[:MAX_GOAL_CHARS],
        "tools": [action["name"]],
        "arguments": {"subject": subject, "action": action, "resource": resource},
    }
    for field in _ACTION_FIELDS:
        if field in aprops and aprops[field] is not None:
            body[field] = aprops[field]
            origin[field] = f"{prefix}action.properties.{field}"
    ctx = dict(context)
    if ctx.get("actor_id") is not None and ctx["actor_id"] != subject["id"]:
        raise _error(f"{prefix}context.actor_id",
                     "contradicts `subject.id`: send one, or the same value in both")
    ctx["actor_id"] = subject["id"]
    origin["context.actor_id"] = f"{prefix}subject.id"
    role = (subject.get("properties") or {}).get("role")
    if ctx.get("actor_role") is None and isinstance(role, str):
        ctx["actor_role"] = role
        origin["context.actor_role"] = f"{prefix}subject.properties.role"
    if ctx.get("resource_scope") is None:
        ctx["resource_scope"] = target
        origin["context.resource_scope"] = f"{prefix}resource"
    targets = ctx.get("target_resources")
    if targets is None:
        ctx["target_resources"] = [target]
        origin["context.target_resources"] = f"{prefix}resource"
    elif isinstance(targets, str | list):
        listed = [targets] if isinstance(targets, str) else list(targets)
        ctx["target_resources"] = listed if target in listed else [*listed, target]
    approval = ctx.get("approval")
    if (ctx.get("approval_id") is None and isinstance(approval, dict)
            and isinstance(approval.get("id"), str)):
        ctx["approval_id"] = approval["id"]
        origin["context.approval_id"] = f"{prefix}context.approval.id"
    body["context"] = ctx
    return body, origin


def _authzen_path(field: str, origin: Mapping[str, str], prefix: str) -> str:
    """The AuthZEN path of a ``/check`` field path (``tools.0`` -> ``action.name``)."""
    head, _, rest = field.partition(".")
    if head == "arguments" and rest:
        return f"{prefix}{rest}"
    for known, mapped in origin.items():
        if field == known or field.startswith(known + "."):
            return mapped + field[len(known):] if head != "tools" else mapped
    if head == "context":
        return f"{prefix}{field}"
    return field if field == "(body)" else f"{prefix}{field}"


def to_check_request(evaluation: Any, prefix: str = "") -> CheckRequest:
    """One Access Evaluation request as a validated ``CheckRequest``; a
    ``RequestValidationError`` naming the AuthZEN fields otherwise."""
    body, origin = check_body(evaluation, prefix)
    try:
        return parse_request(body)
    except RequestValidationError as exc:
        raise RequestValidationError([
            FieldError(_authzen_path(e.field, origin, prefix), e.message, e.type)
            for e in exc.errors]) from None


def parse_evaluation(raw: bytes) -> CheckRequest:
    """``decide_check``'s parser for ``POST /access/v1/evaluation``: the body, as received."""
    return to_check_request(load_body(raw))


def item_parser(prefix: str) -> Callable[[bytes], CheckRequest]:
    """The parser of one evaluation of a batch (its errors named ``evaluations.N.…``)."""
    return lambda raw: to_check_request(orjson.loads(raw), prefix)


def refusal_parser(error: RequestValidationError) -> Callable[[bytes], CheckRequest]:
    """A parser that refuses: a batch whose envelope is invalid is answered (and logged as a
    rejected request) by ``decide_check`` like any invalid body."""

    def parse(_: bytes) -> CheckRequest:
        raise error

    return parse


# -- the batch: POST /access/v1/evaluations ------------------------------------------------------


def batch(payload: Any) -> tuple[list[Any] | None, Semantic]:
    """The evaluations of an Access Evaluations request, defaults applied (``None``: no
    ``evaluations``, a single evaluation), and its semantic. An item that is not an object is
    kept as it is, so that its own evaluation reports it."""
    if not isinstance(payload, dict):
        raise _error("(body)", "the request must be a JSON object", "model_type")
    options = payload.get("options")
    semantic: Semantic = "execute_all"
    if options is not None:
        if not isinstance(options, dict):
            raise _error("options", "must be an object", "model_type")
        chosen = options.get("evaluations_semantic")
        if chosen is not None:
            if chosen not in SEMANTICS:
                raise _error("options.evaluations_semantic",
                             f"must be one of {', '.join(SEMANTICS)}", "literal_error")
            semantic = chosen
    items = payload.get("evaluations")
    if items is None or items == []:
        return None, semantic
    if not isinstance(items, list):
        raise _error("evaluations", "must be an array of evaluation objects", "list_type")
    if len(items) > MAX_EVALUATIONS:
        raise _error("evaluations", f"has {len(items)} items; the limit is {MAX_EVALUATIONS}",
                     "too_long")
    defaults = {k: payload[k] for k in TUPLE_KEYS if payload.get(k) is not None}
    merged: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            merged.append({**defaults, **{k: v for k, v in item.items() if v is not None}})
        else:
            merged.append(item)  # its evaluation says it is not an object
    return merged, semantic


def item_request_id(client_id: str | None, index: int) -> str | None:
    """The request id of evaluation ``index`` of a batch: derived from the client's
    ``X-Request-ID`` when it is a UUID (so that a retried batch replays), else none (a new id
    is minted, as for ``/check``)."""
    if not client_id:
        return None
    try:
        base = uuid.UUID(client_id.strip())
    except ValueError:
        return None
    return str(uuid.uuid5(base, f"evaluations/{index}"))


# -- answers: /check -> AuthZEN ------------------------------------------------------------------


def decision_context(body: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """The ``context`` of a decision: why, under which policy, and what to do next."""
    ctx: dict[str, Any] = {
        "request_id": body.get("request_id"),
        "verdict": body.get("verdict", "DENY"),
        "reason": body.get("reason", ""),
        "policy_version": body.get("policy_version"),
        "issues": body.get("issues", []),
        "risk_score": body.get("risk_score"),
        "buckets": body.get("buckets", []),
        "action_digest": body.get("action_digest"),
    }
    for key in ("defer_questions", "clarifying_questions"):
        if body.get(key):
            ctx[key] = body[key]
    if body.get("cached"):
        ctx["cached"] = True
    if body.get("decision") == "ERROR":
        ctx["error"] = {"status": 500, "message": body.get("reason", "evaluation failed")}
    if body.get("execution_token"):
        ctx["execution_token"] = body["execution_token"]
    approval = body.get("approval")
    if isinstance(approval, dict) and approval.get("approval_id"):
        url = f"{base_url}/v1/approvals/{approval['approval_id']}"
        ctx["approval"] = {"id": approval["approval_id"], "url": url, **approval}
        ctx["access_request"] = {  # the access-request profile's requestable denial
            "expires_at": approval.get("expires_at"),
            "template": "stage0-approval",
            "task": {"id": approval["approval_id"], "status": approval.get("status"),
                     "status_endpoint": url, "expires_at": approval.get("expires_at")},
        }
    return ctx


def error_context(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``context`` of one evaluation of a batch that was refused or invalid."""
    error: dict[str, Any] = {"status": 400 if status == 422 else status,
                             "code": body.get("code"), "message": body.get("detail", "")}
    if body.get("errors"):
        error["errors"] = body["errors"]
    return {"request_id": body.get("request_id"), "verdict": "DENY", "error": error}


def evaluation_answer(status: int, content: bytes,
                      base_url: str) -> tuple[int, dict[str, Any]]:
    """``decide_check``'s answer as an AuthZEN one: 200 ``{decision, context}`` for an
    evaluated decision; otherwise the error (``decision: false``), a 422 becoming AuthZEN's
    400."""
    body = orjson.loads(content)
    if status == 200:
        allowed = body.get("verdict") == "ALLOW" and body.get("decision") == "GO"
        return 200, {"decision": allowed, "context": decision_context(body, base_url)}
    if status == 422:
        status = 400
    for key in ("verdict", "issues") if status == 400 else ():
        body.pop(key, None)  # the 422's /check fields; the errors say what is wrong
    body["decision"] = False
    return status, body


def item_answer(status: int, content: bytes, base_url: str) -> dict[str, Any]:
    """One evaluation of a batch: its decision, or ``decision: false`` with the error."""
    if status == 200:
        return evaluation_answer(status, content, base_url)[1]
    return {"decision": False, "context": error_context(status, orjson.loads(content))}


# -- the routes ----------------------------------------------------------------------------------

router = APIRouter(tags=["AuthZEN"])

EVALUATION = "/access/v1/evaluation"
EVALUATIONS = "/access/v1/evaluations"
CONFIGURATION = "/.well-known/authzen-configuration"

_ENTITY = {"type": "object", "additionalProperties": True, "properties": {
    "type": {"type": "string", "minLength": 1}, "id": {"type": "string", "minLength": 1},
    "properties": {"type": "object"}}}
_ACTION = {"type": "object", "additionalProperties": True, "required": ["name"], "properties": {
    "name": {"type": "string", "minLength": 1}, "properties": {"type": "object", "properties": {
        "side_effects": {"type": "array", "items": {"type": "string"}},
        "constraints": {"type": "array", "items": {"type": "string"}},
        "success_criteria": {"type": "array", "items": {"type": "string"}},
        "goal": {"type": "string"}}}}}
_TUPLE = {"subject": {**_ENTITY, "required": ["type", "id"]}, "action": _ACTION,
          "resource": {**_ENTITY, "required": ["type", "id"]}, "context": {"type": "object"}}
EVALUATION_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["subject", "action", "resource"], "properties": _TUPLE}
EVALUATIONS_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    **_TUPLE,
    "evaluations": {"type": "array", "maxItems": MAX_EVALUATIONS,
                    "items": {"type": "object", "properties": _TUPLE}},
    "options": {"type": "object", "properties": {
        "evaluations_semantic": {"enum": list(SEMANTICS)}}}}}
_DECISION = {"type": "object", "required": ["decision"], "properties": {
    "decision": {"type": "boolean"}, "context": {"type": "object"}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The request is not an AuthZEN request (the field is named); never a "
                         "`decision: true`"},
    401: {"description": "Missing, invalid or revoked key"},
    402: {"description": "Monthly quota exceeded"},
    403: {"description": "The key lacks the `check` scope"},
    409: {"description": "X-Request-ID reused with a different body"},
    415: {"description": "The body is declared as something other than JSON"},
    429: {"description": "Per-minute or daily limit, or the back-off of failed "
                         "authentications; see retry_after_seconds"},
    503: {"description": "The service cannot decide; `decision: false`"},
}


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _respond(status: int, body: dict[str, Any], headers: dict[str, str], request: Request,
             fallback_id: str | None) -> Response:
    out = {k: v for k, v in headers.items() if k != "x-request-id"}
    rid = request.headers.get("x-request-id") or fallback_id
    if rid:  # AuthZEN: the client's identifier, as sent; else the decision's
        out["x-request-id"] = rid
    return Response(orjson.dumps(body), status, headers=out, media_type="application/json")


def _header(request: Request, request_id: str | None) -> Callable[[str], str | None]:
    """The request's headers, with ``x-request-id`` replaced by one evaluation's own."""
    def get(name: str) -> str | None:
        return request_id if name == "x-request-id" else request.headers.get(name)
    return get


@router.post(
    EVALUATION,
    summary="AuthZEN Access Evaluation: may this subject perform this action on this resource?",
    responses={200: {"description": "`decision: true` for ALLOW only; DEFER and DENY are "
                                    "false, with the reason (and a DEFER's approval) in "
                                    "`context`", "content": {"application/json": {
                                        "schema": _DECISION}}}, **_ERRORS},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": EVALUATION_SCHEMA}}}},
)
async def evaluation(request: Request, state: State) -> Response:
    raw = await request.body()
    status, content, headers = await decide_check(
        state, request.headers.get, raw, len(raw), source_of(request),
        parse=parse_evaluation, route=EVALUATION)
    status, body = evaluation_answer(status, content, _base_url(request))
    rid = body.get("request_id") or (body.get("context") or {}).get("request_id")
    return _respond(status, body, headers, request, rid)


@router.post(
    EVALUATIONS,
    summary="AuthZEN Access Evaluations: several evaluations in one request (boxcarring)",
    responses={200: {"description": "`evaluations`: one `{decision, context}` per evaluation, "
                                    "in order (fewer when a short-circuit semantic stopped); "
                                    "without `evaluations`, one decision as on /evaluation",
                     "content": {"application/json": {"schema": {"type": "object",
                                 "properties": {"evaluations": {"type": "array",
                                                                "items": _DECISION}}}}}},
               **_ERRORS},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": EVALUATIONS_SCHEMA}}}},
)
async def evaluations(request: Request, state: State) -> Response:
    raw = await request.body()
    source, base = source_of(request), _base_url(request)
    try:
        items, semantic = batch(load_body(raw))
    except RequestValidationError as exc:  # answered, and logged, as any invalid body
        items, semantic, parse = None, "execute_all", refusal_parser(exc)
    else:
        parse = parse_evaluation
    if items is None:  # no `evaluations`: one evaluation, as on /access/v1/evaluation
        status, content, headers = await decide_check(
            state, request.headers.get, raw, len(raw), source, parse=parse, route=EVALUATIONS)
        status, body = evaluation_answer(status, content, base)
        rid = body.get("request_id") or (body.get("context") or {}).get("request_id")
        return _respond(status, body, headers, request, rid)

    return await _batch(request, state, items, semantic)


async def _batch(request: Request, state: State, items: list[Any],
                 semantic: Semantic) -> Response:
    source, base = source_of(request), _base_url(request)
    client_id = request.headers.get("x-request-id")

    async def one(index: int) -> tuple[int, bytes, dict[str, str]]:
        item = orjson.dumps(items[index])
        return await decide_check(
            state, _header(request, item_request_id(client_id, index)), item,
            len(item), source, parse=item_parser(f"evaluations.{index}."),
            route=EVALUATIONS)

    first = await one(0)
    if first[0] not in (200, 422):  # the key, its scope, a quota: the request's own refusal
        status, body = evaluation_answer(first[0], first[1], base)
        return _respond(status, body, first[2], request, body.get("request_id"))
    answers = [item_answer(first[0], first[1], base)]
    if semantic == "execute_all":
        rest = await asyncio.gather(*(one(i) for i in range(1, len(items))))
        answers.extend(item_answer(s, c, base) for s, c, _ in rest)
    else:  # evaluate in order until the first decision that settles it
        settles = semantic == "permit_on_first_permit"  # true settles it, else false does
        while answers[-1]["decision"] is not settles and len(answers) < len(items):
            status, content, _ = await one(len(answers))
            answers.append(item_answer(status, content, base))
        if answers[-1]["decision"] is settles:
            answers[-1]["context"]["evaluations_semantic"] = semantic  # it stopped here
    return _respond(200, {"evaluations": answers}, {}, request,
                    answers[0]["context"].get("request_id"))


@router.get(CONFIGURATION, summary="AuthZEN Policy Decision Point metadata")
async def configuration(request: Request) -> Response:
    base = _base_url(request)
    body = {
        "policy_decision_point": base,
        "access_evaluation_endpoint": base + EVALUATION,
        "access_evaluations_endpoint": base + EVALUATIONS,
    }
    return Response(orjson.dumps(body), 200, media_type="application/json",
                    headers={"cache-control": "max-age=300"})
