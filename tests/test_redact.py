"""Redaction of what the log keeps: the copy-on-write walk matches a plain deep copy's result."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stage0.store.redact import MASK, is_secret_key, redact


def reference(value: Any, path: str, masked: list[str]) -> Any:
    """The obvious implementation: copy everything, mask secret keys."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and is_secret_key(key) and item is not None:
                out[key] = MASK
                masked.append(here)
            else:
                out[key] = reference(item, here, masked)
        return out
    if isinstance(value, list):
        return [reference(item, f"{path}.{i}" if path else str(i), masked)
                for i, item in enumerate(value)]
    return value


KEYS = st.sampled_from(["goal", "password", "api_key", "ok", "nested", "token", "x", "Cookie"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=30,
)


@given(st.dictionaries(KEYS, JSON, max_size=6))
def test_redaction_matches_the_reference_and_leaves_its_input_alone(doc: dict[str, Any]) -> None:
    before = copy.deepcopy(doc)
    expected_paths: list[str] = []
    expected = reference(doc, "", expected_paths)
    got, paths = redact(doc)
    assert got == expected
    assert paths == expected_paths
    assert doc == before


def test_nothing_to_mask_shares_the_input() -> None:
    doc = {"goal": "g", "arguments": {"a": [1, {"b": 2}]}}
    assert redact(doc) == (doc, [])
    assert redact(doc)[0] is doc
    masked, paths = redact({"arguments": {"rows": [{"ok": 1}, {"password": "p"}]}})
    assert masked == {"arguments": {"rows": [{"ok": 1}, {"password": MASK}]}}
    assert paths == ["arguments.rows.1.password"]
