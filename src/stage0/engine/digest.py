"""Provenance hashes: RFC 8785 canonical JSON, the action digest and the input hash.

Canonical JSON comes from ``rfc8785`` (Trail of Bits' maintained implementation). Its pure-Python
encoder costs about 40 µs for a small action, more than the whole decision budget, so values
whose canonical form provably equals orjson's sorted-key compact output take that path:
no floats (ES6 number formatting differs from orjson's), integers inside the IEEE-754 safe
range, and ASCII object keys (RFC 8785 sorts keys by UTF-16 code units, orjson by code
points; the two orders agree on ASCII). Strings are escaped identically by both. Everything
else goes to ``rfc8785``. A property test checks the two agree on the fast path's domain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import rfc8785
from pydantic_core import to_jsonable_python

_SAFE_INT = 2**53 - 1


def _fast_safe(value: Any, depth: int = 0) -> bool:
    if value is None or value is True or value is False or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -_SAFE_INT <= value <= _SAFE_INT
    if depth > 32:
        return False
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and k.isascii() and _fast_safe(v, depth + 1)
            for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return all(_fast_safe(v, depth + 1) for v in value)
    return False


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) canonical form of a JSON value."""
    if _fast_safe(value):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return bytes(rfc8785.dumps(value))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def action_digest(
    *,
    tools: Sequence[str],
    side_effects: Sequence[str],
    arguments: Mapping[str, Any] | None,
    environment: str | None,
    resource_scope: str | None,
    target_resources: Sequence[str] | str | None,
) -> str:
    """SHA-256 of the canonical JSON of what will execute (CONTRACT section 6).

    Tools and side effects are normalised, de-duplicated and sorted (they are declared sets);
    target resources are sorted. Volatile counters (iterations, elapsed, cost) are not part of it.
    """
    return sorted_action_digest(
        tuple(sorted(set(tools))), tuple(sorted(set(side_effects))), arguments, environment,
        resource_scope, target_resources,
    )


_CACHE_LIMIT = 4096
_BY_NAMES: dict[tuple[object, ...], str] = {}
"""Digests of actions without arguments, by their names (tools, side effects, environment,
scope, targets: strings that repeat from request to request)."""


def sorted_action_digest(
    tools: tuple[str, ...],
    side_effects: tuple[str, ...],
    arguments: Mapping[str, Any] | None,
    environment: str | None,
    resource_scope: str | None,
    target_resources: Sequence[str] | str | None,
) -> str:
    """:func:`action_digest` of tools and side effects already de-duplicated and sorted (the
    engine's classification keeps them so, once per distinct list)."""
    if arguments:
        return _sorted_action_digest(tools, side_effects, arguments, environment,
                                     resource_scope, target_resources)
    key = (tools, side_effects, environment, resource_scope,
           target_resources if target_resources is None or isinstance(target_resources, str)
           else tuple(target_resources))
    hit = _BY_NAMES.get(key)
    if hit is None:
        hit = _sorted_action_digest(tools, side_effects, None, environment, resource_scope,
                                    target_resources)
        if len(_BY_NAMES) < _CACHE_LIMIT:
            _BY_NAMES[key] = hit
    return hit


def _sorted_action_digest(
    tools: tuple[str, ...],
    side_effects: tuple[str, ...],
    arguments: Mapping[str, Any] | None,
    environment: str | None,
    resource_scope: str | None,
    target_resources: Sequence[str] | str | None,
) -> str:
    if isinstance(target_resources, str):
        targets: list[str] = [target_resources]
    else:
        targets = sorted(set(target_resources)) if target_resources else []
    action = {
        "tools": tools,
        "side_effects": side_effects,
        "arguments": dict(arguments) if arguments else {},
        "environment": environment,
        "resource_scope": resource_scope,
        "target_resources": targets,
    }
    # Every part but `arguments` is a string, a list of strings or null by validation, so only
    # the arguments decide whether the fast path is exact. orjson writes a tuple as an array.
    if not arguments or _fast_safe(action["arguments"]):
        return sha256_hex(orjson.dumps(action, option=orjson.OPT_SORT_KEYS))
    action["tools"], action["side_effects"] = list(tools), list(side_effects)
    return sha256_hex(bytes(rfc8785.dumps(action)))


def bound_fields(goal: str, context: Any, binds: Sequence[str]) -> dict[str, Any]:
    """The values of the request fields an approval is bound to besides the action digest
    (``goal``, ``context.<key>``: a declared field or an extra key), absent ones left out, in
    their JSON form (a timestamp as ISO-8601 text, as sent)."""
    found: dict[str, Any] = {}
    declared = type(context).model_fields if context is not None else {}
    extra = (getattr(context, "model_extra", None) or {}) if context is not None else {}
    for path in binds:
        if path == "goal":
            found[path] = goal
            continue
        key = path.partition(".")[2]
        value = getattr(context, key, None) if key in declared else extra.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            value = value.isoformat().replace("+00:00", "Z")
        elif not isinstance(value, str | int | float | bool | list | dict):
            value = to_jsonable_python(value)  # in process: a Decimal, a date, …
        found[path] = value
    return found


def binding_digest(action: str, fields: Mapping[str, Any]) -> str:
    """SHA-256 of the RFC 8785 form of ``{"action_digest": …, "fields": {…}}``: what a
    server-side approval is bound to (docs/approvals.md, "What an approval is bound to")."""
    return sha256_hex(canonical_json({"action_digest": action, "fields": dict(fields)}))
