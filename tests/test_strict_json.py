"""``check_strict``: its fast path (orjson, and the count of ``:`` against the re-encoding)
never lets a repeated member name or a non-finite number through, and never refuses strict
JSON; ``parse_request`` applies it to every body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stage0.contract import RequestValidationError, parse_request
from stage0.contract.strict_json import DUPLICATE_KEY, NOT_FINITE, check_strict

NAMES = st.sampled_from(["a", "b", "goal", "t:ime", "x\u00e9", ":", "\u003a", "k\\"])
LEAVES = (st.none() | st.booleans() | st.integers(-(2**60), 2**60)
          | st.floats(allow_nan=False, allow_infinity=False)
          | st.text(alphabet=st.sampled_from("ab:\"\\\u00e9\n{}[],"), max_size=6))
DOCS = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(NAMES, inner, max_size=4), max_leaves=25)
ENCODINGS = st.sampled_from([{}, {"ensure_ascii": False}, {"indent": 1},
                             {"separators": (",", ":")}])


def refusal(raw: bytes) -> str | None:
    try:
        check_strict(raw)
    except RequestValidationError as exc:
        return exc.errors[0].type
    return None


@given(DOCS, ENCODINGS)
def test_strict_json_is_never_refused(doc: Any, options: dict[str, Any]) -> None:
    assert refusal(json.dumps(doc, **options).encode()) is None


def _with_duplicate(doc: Any, data: st.DataObject) -> str:
    """``doc`` as JSON text with exactly one member written twice, at a drawn depth and
    position, the copy holding a drawn value (which may hold colons)."""
    if isinstance(doc, dict | list) and doc and data.draw(st.booleans()):  # deeper
        items = list(doc.items()) if isinstance(doc, dict) else list(enumerate(doc))
        j = data.draw(st.integers(0, len(items) - 1))
        parts = [_with_duplicate(v, data) if i == j else json.dumps(v)
                 for i, (_, v) in enumerate(items)]
        if isinstance(doc, list):
            return "[" + ", ".join(parts) + "]"
        return "{" + ", ".join(f"{json.dumps(k)}: {v}"
                               for (k, _), v in zip(items, parts, strict=True)) + "}"
    if isinstance(doc, dict) and doc:
        members = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()]
        copy = f"{json.dumps(data.draw(st.sampled_from(list(doc))))}: "
        members.insert(data.draw(st.integers(0, len(members))), copy + json.dumps(
            data.draw(LEAVES)))
        return "{" + ", ".join(members) + "}"
    return '{"a": ' + json.dumps(data.draw(LEAVES)) + ', "a": ' + json.dumps(doc) + "}"


@given(DOCS, st.data())
def test_a_repeated_member_name_is_always_refused(doc: Any, data: st.DataObject) -> None:
    text = _with_duplicate(doc, data)
    assert refusal(text.encode()) == DUPLICATE_KEY, text
    # also when an escaped colon elsewhere makes the counts of ':' agree again
    assert refusal(("[" + text + ', "\\u003a"]').encode()) == DUPLICATE_KEY


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999",
                                    "1.5E+400", "123456789e400"])
def test_a_number_that_is_not_finite_is_refused_where_it_is(number: str) -> None:
    raw = f'{{"goal": "g", "arguments": {{"rows": [1, {{"v": {number}}}]}}}}'.encode()
    with pytest.raises(RequestValidationError) as caught:
        parse_request(raw)
    error = caught.value.errors[0]
    assert (error.type, error.field) == (NOT_FINITE, "arguments.rows.1.v")


def test_what_is_not_json_is_left_to_the_validation_that_follows() -> None:
    for raw in (b"{not json", b'{"goal": "x"', b'{"a": "\xff"}', b""):
        assert refusal(raw) is None
        with pytest.raises(RequestValidationError) as caught:
            parse_request(raw)
        assert caught.value.errors[0].type == "json_invalid"


def test_numbers_within_a_double_and_big_integers_are_not_this_checks_business() -> None:
    assert refusal(b'{"a": 1e308, "b": -1e-999, "c": 0.0, "d": -0}') is None
    assert refusal(b'{"a": 1' + b"0" * 400 + b"}") is None  # the request's own limit refuses it


def test_parse_request_refuses_a_duplicate_from_any_surface() -> None:
    with pytest.raises(RequestValidationError) as caught:
        parse_request('{"goal": "Refund order 1042", "goal": "Search tickets"}')
    assert (caught.value.errors[0].type, caught.value.errors[0].field) == (DUPLICATE_KEY, "goal")
