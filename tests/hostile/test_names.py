"""Hostile tool names and side effects (issue #17, item 1): refused or canonicalised, never a
way around the classifier.

Every disguise of a high-risk name either is refused (a 422 naming the field and the
character: control characters, whitespace other than the ASCII space, look-alike letters,
combining marks) or is decided at least as strictly as the name itself (format characters,
case, full-width letters, any separators between any letters). The suites count the ALLOWs and
fail on any: in the engine directly (several thousand names), and through a real server on
127.0.0.1 (a few hundred requests).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stage0.contract import RequestValidationError
from stage0.contract.effects import VERDICT_RANK
from stage0.contract.names import fold_name, name_problem, squash
from stage0.testing import make_engine
from tests.hostile.conftest import FROZEN_AT, Loopback, Tally

ENGINE = make_engine(FROZEN_AT)

HIGH_RISK_TOOLS = [
    "deploy.production", "payments.create_payout", "billing.refund", "vendor_transfer",
    "db.drop_table", "admin.accounts.bulk_delete", "users.role_reset", "db.schema_apply",
    "vault.rotate_secret", "tenant.migrate_tenant",
]
HIGH_RISK_EFFECTS = [
    "money_movement", "data_deletion", "schema_change", "secret_rotation", "deploy", "payout",
    "bulk_delete", "role_reset", "tenant_migration", "config_write",
]
UNKNOWN_HIGH_RISK_TOOLS = [
    "iam.grant_admin", "acl.revoke_access", "billing.remit_funds", "wallet.withdraw",
    "payroll.run", "kv.put_secret", "vault.read_credentials", "keys.rotate", "db.alter_table",
    "db.schema.update", "tenant.drop_db", "mongo.drop_collection", "users.drop_user",
    "cluster.redeploy", "k8s.rollout_restart", "users.set_role", "iam.update_permission",
    "s3.drop_bucket", "fs.rm_rf", "records.shred", "db.dropTable", "DB.Schema.Apply",
    "dbschemaapply", "vendor.pay",
]
UNKNOWN_HIGH_RISK_EFFECTS = [
    "grant_access", "permission_update", "role_assignment", "secret_read",
    "credentials_exposure", "schema_push", "funds_withdrawal", "remittance", "record_removal",
    "data_wipe", "key_rotation", "payout_batch", "datadeletion", "data.deletion",
    "Money-Movement", "moneymovement",
]

CONTROL = [chr(c) for c in range(0x20)] + ["\x7f"]
"""The 33 ASCII control characters the issue names (U+0000-U+001F, U+007F)."""
C1_CONTROL = [chr(c) for c in range(0x80, 0xA0)]
WHITESPACE = [chr(c) for c in range(0x3001) if chr(c).isspace() and chr(c) != " "]
"""Every whitespace character but the ASCII space (tab, newline, NBSP, U+2028, U+3000, ...)."""
FORMAT = ["\u00ad", "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b",
          "\u202c", "\u202d", "\u202e", "\u2060", "\u2061", "\u2062", "\u2063", "\u2064",
          "\u2066", "\u2067", "\u2068", "\u2069", "\ufeff", "\U000e0001", "\U000e0041"]
"""Invisible format characters (Unicode ``Cf``): zero-width space and joiners, soft hyphen,
bidi controls, word joiner, BOM, tags. They are removed."""
HOMOGLYPHS = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441",
              "y": "\u0443", "s": "\u0455", "i": "\u0456", "l": "\u04cf", "t": "\u03c4"}
COMBINING = ["\u0301", "\u0308", "\u0336", "\u034f", "\ufe0f"]
SEPARATORS = [".", "_", "-", "/", ":", " ", "", "__", "..", " - ", "-_", "::", "//", "+",
              ",", "|", "~", "@"]


def body(tools: list[str] | None = None, effects: list[str] | None = None) -> dict[str, Any]:
    """A high-risk-looking request in production, with a guardrail (so that the verdict comes
    from the buckets, not from missing constraints)."""
    return {
        "goal": "Run the approved change for the quarterly close",
        "success_criteria": ["The change is applied and verified"],
        "tools": tools or [],
        "side_effects": effects or [],
        "constraints": ["max_records: 10"],
        "context": {"environment": "production", "rollback_plan": "runbook-12"},
    }


def outcome(request: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(``refused`` or the verdict, the buckets)."""
    try:
        decision = ENGINE.check(request)
    except RequestValidationError:
        return "refused", ()
    return decision.verdict, tuple(decision.body["buckets"])


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _parts(name: str) -> list[str]:
    return [p for p in name.replace(".", "_").split("_") if p]


def disguises(name: str) -> Iterator[str]:
    """Spellings of ``name`` that canonicalise to its letters: case, separators anywhere,
    format characters anywhere, full-width letters, padding."""
    yield from (name.upper(), name.title(), name.swapcase(),
                "".join(c.upper() if i % 2 else c for i, c in enumerate(name)))
    parts = _parts(name)
    for sep in SEPARATORS:
        yield sep.join(parts)
        yield sep.join(name)  # between every pair of characters
        yield f"{sep}{name}{sep}"
    for k in range(1, len(name)):
        yield name[:k] + " " + name[k:]
        yield name[:k] + "." + name[k:]
    for f in FORMAT:
        yield f + name
        yield name[: len(name) // 2] + f + name[len(name) // 2:]
        yield name + f
        yield f.join(name)
    yield _fullwidth(name)
    yield _fullwidth(name[: len(name) // 2]) + name[len(name) // 2:]
    yield "\u200b".join(_fullwidth(name.upper()))
    yield "  " + " ".join(parts).title() + "  "


def refused_spellings(name: str) -> Iterator[tuple[str, str]]:
    """(spelling, expected error type): characters that may never be in a name."""
    middle = len(name) // 2
    for ch in CONTROL + C1_CONTROL:
        for spelled in (ch + name, name[:middle] + ch + name[middle:], name + ch):
            yield spelled, "name_control_character"
    for ch in WHITESPACE:
        kind = "name_control_character" if unicodedata.category(ch) == "Cc" else \
            "name_whitespace"
        yield name[:middle] + ch + name[middle:], kind
    for letter, glyph in HOMOGLYPHS.items():
        if letter in name:
            yield name.replace(letter, glyph, 1), "name_not_ascii"
    for mark in COMBINING:
        yield name[:middle] + mark + name[middle:], "name_not_ascii"


BASELINES = {
    **{("tools", t): outcome(body(tools=[t])) for t in HIGH_RISK_TOOLS},
    **{("side_effects", e): outcome(body(effects=[e])) for e in HIGH_RISK_EFFECTS},
}


def _request(field: str, name: str) -> dict[str, Any]:
    return body(tools=[name]) if field == "tools" else body(effects=[name])


# -- the issue's own examples -------------------------------------------------------------------

def test_the_issues_examples() -> None:
    verdict, buckets = outcome(body(tools=["deploy.production"]))
    assert verdict != "ALLOW"
    assert "production_control_plane" in buckets

    for name, char in (("\u0000deploy.production", "U+0000"), ("users.role_re\nset", "U+000A")):
        with pytest.raises(RequestValidationError) as caught:
            ENGINE.check(body(tools=[name]))
        [error] = caught.value.errors
        assert (error.field, error.type) == ("tools.0", "name_control_character")
        assert char in error.message

    assert outcome(body(tools=["db.schema.apply"])) == outcome(body(tools=["db_schema_apply"]))
    assert outcome(body(tools=["db.schema.apply"]))[1] == ("production_control_plane",)
    assert outcome(body(tools=["dbschemaapply"]))[1] == ("production_control_plane",)
    assert outcome(body(effects=["datadeletion"]))[1] == ("destructive_data",)
    assert outcome(body(tools=["users.role_re set"]))[1] == ("destructive_data",)


def test_the_baselines_are_high_risk() -> None:
    for (field, name), (verdict, buckets) in BASELINES.items():
        assert verdict != "ALLOW", (field, name, verdict)
        assert buckets, (field, name)


# -- the engine, thousands of names -------------------------------------------------------------

def test_control_characters_are_refused_never_allowed() -> None:
    """The issue's 990 (10 tools x 33 control characters x 3 positions), then the same for
    side effects and C1 controls: every one a validation error."""
    tally = Tally()
    for field, names in (("tools", HIGH_RISK_TOOLS), ("side_effects", HIGH_RISK_EFFECTS)):
        for name in names:
            for spelled, _ in refused_spellings(name):
                tally.add(spelled, outcome(_request(field, spelled))[0])
    tally.assert_no_allow()
    assert tally.outcomes == {"refused": tally.total}
    assert tally.total >= 2 * 990


@pytest.mark.parametrize("name", [*HIGH_RISK_TOOLS, *HIGH_RISK_EFFECTS])
def test_each_refusal_names_the_field_and_the_character(name: str) -> None:
    field = "tools" if name in HIGH_RISK_TOOLS else "side_effects"
    for spelled, kind in refused_spellings(name):
        with pytest.raises(RequestValidationError) as caught:
            ENGINE.check(_request(field, spelled))
        [error] = caught.value.errors
        assert (error.field, error.type) == (f"{field}.0", kind), spelled
        bad = next((c for c in spelled if not c.isascii() or not c.isprintable()), None)
        if kind != "name_not_ascii":
            assert bad is not None
            assert f"U+{ord(bad):04X}" in error.message


def test_disguised_names_are_decided_at_least_as_strictly() -> None:
    tally = Tally()
    looser = []
    for (field, name), (base, base_buckets) in BASELINES.items():
        for spelled in disguises(name):
            verdict, buckets = outcome(_request(field, spelled))
            tally.add(spelled, verdict)
            if verdict != "refused" and (
                    VERDICT_RANK[verdict] < VERDICT_RANK[base]
                    or not set(base_buckets) <= set(buckets)):
                looser.append((spelled, verdict, buckets, base))
    tally.assert_no_allow()
    assert not looser, f"{len(looser)} of {tally.total} disguises decided less strictly: " \
        f"{looser[:5]!r}"
    assert tally.total > 3000


def test_unknown_names_that_look_high_risk_are_not_low_risk() -> None:
    tally = Tally()
    unbucketed = []
    for field, names in (("tools", UNKNOWN_HIGH_RISK_TOOLS),
                         ("side_effects", UNKNOWN_HIGH_RISK_EFFECTS)):
        for name in names:
            verdict, buckets = outcome(_request(field, name))
            tally.add(name, verdict)
            if not buckets:
                unbucketed.append(name)
    tally.assert_no_allow()
    assert not unbucketed


@pytest.mark.parametrize("where", ["context.environment", "environment"])
@pytest.mark.parametrize("env", ["production\x00", "prod\nuction", "\t production",
                                 "\u0440roduction", "production\u2028"])
def test_a_disguised_environment_is_refused(where: str, env: str) -> None:
    """The environment decides the production rules, so it follows the name rules too."""
    request = body(tools=["deploy.production"])
    if where == "environment":
        del request["context"]["environment"]
        request["environment"] = env
    else:
        request["context"]["environment"] = env
    with pytest.raises(RequestValidationError) as caught:
        ENGINE.check(request)
    assert [e.field for e in caught.value.errors] == [where]


@pytest.mark.parametrize("env", ["PRODUCTION", "produc\u200btion", "\uff50\uff52\uff4f\uff44",
                                 " Production "])
def test_a_canonicalised_environment_is_production(env: str) -> None:
    plain = ENGINE.check({**body(tools=["deploy.production"]), "context": {
        "environment": "production"}}).body
    disguised = ENGINE.check({**body(tools=["deploy.production"]), "context": {
        "environment": env}}).body
    assert (disguised["verdict"], disguised["risk_score"]) == (plain["verdict"],
                                                               plain["risk_score"])
    assert "ROLLBACK_PLAN_MISSING" in [i["code"] for i in disguised["issues"]]


def test_the_format_characters_of_the_suite_are_format_characters() -> None:
    assert {unicodedata.category(c) for c in FORMAT} == {"Cf"}
    assert {unicodedata.category(c) for c in CONTROL + C1_CONTROL} == {"Cc"}
    assert len(CONTROL) == 33
    assert "\u3000" in WHITESPACE
    assert "\u00a0" in WHITESPACE


# -- properties ---------------------------------------------------------------------------------

_SEPARATOR_TEXT = st.sampled_from([".", "_", "-", "/", ":", " ", "__", "+", ","])


@st.composite
def transformed(draw: st.DrawFn) -> tuple[str, str, str]:
    """(field, high-risk name, a transformation of it that keeps its letters)."""
    field, name = draw(st.sampled_from(sorted(BASELINES)))
    chars = list(name)
    for _ in range(draw(st.integers(1, 8))):
        step = draw(st.sampled_from(["case", "insert_sep", "drop_sep", "format", "fullwidth",
                                     "pad"]))
        i = draw(st.integers(0, len(chars)))
        if step == "case" and i < len(chars):
            chars[i] = chars[i].swapcase()
        elif step == "insert_sep":
            chars.insert(i, draw(_SEPARATOR_TEXT))
        elif step == "drop_sep":
            seps = [k for k, c in enumerate(chars) if c in "._-/: "]
            if seps:
                del chars[draw(st.sampled_from(seps))]
        elif step == "format":
            chars.insert(i, draw(st.sampled_from(FORMAT)))
        elif step == "fullwidth" and i < len(chars):
            chars[i] = _fullwidth(chars[i])
        elif step == "pad":
            chars = [draw(st.sampled_from([" ", "_", ".", "-"])), *chars]
    return field, name, "".join(chars)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transformed())
def test_no_transformation_yields_a_less_strict_verdict(case: tuple[str, str, str]) -> None:
    field, name, spelled = case
    base, base_buckets = BASELINES[(field, name)]
    verdict, buckets = outcome(_request(field, spelled))
    assert verdict != "ALLOW", spelled
    if verdict != "refused":
        assert VERDICT_RANK[verdict] >= VERDICT_RANK[base], (spelled, verdict, base)
        assert set(base_buckets) <= set(buckets), (spelled, buckets, base_buckets)
        assert squash(fold_name(spelled)) == squash(fold_name(name))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(BASELINES)), st.data())
def test_a_forbidden_character_anywhere_is_refused(key: tuple[str, str], data: st.DataObject
                                                  ) -> None:
    field, name = key
    bad = data.draw(st.sampled_from(CONTROL + C1_CONTROL + WHITESPACE + list(HOMOGLYPHS.values())
                                    + COMBINING))
    i = data.draw(st.integers(0, len(name)))
    spelled = name[:i] + bad + name[i:]
    assert outcome(_request(field, spelled))[0] == "refused", repr(spelled)


@given(st.text(max_size=40))
def test_canonical_names_are_stable(text: str) -> None:
    """What is accepted canonicalises idempotently to plain ASCII; what is refused says why."""
    problem = name_problem(text)
    if problem is None:
        canonical = fold_name(text)
        assert canonical == fold_name(canonical)
        assert canonical.isascii()
        assert canonical.isprintable()
        assert canonical == canonical.lower()
        assert name_problem(canonical) is None
    else:
        assert problem[0] in ("name_control_character", "name_whitespace", "name_not_ascii",
                              "name_blank")


# -- the same through a real server on loopback -------------------------------------------------

def _http_cases() -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """(what, body, the refused field or ``None`` when it is decided)."""
    for field, names in (("tools", HIGH_RISK_TOOLS), ("side_effects", HIGH_RISK_EFFECTS)):
        for name in names:
            middle = len(name) // 2
            for ch in ("\x00", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x85", "\u00a0",
                       "\u2028", "\u3000"):
                yield "refused", _request(field, name[:middle] + ch + name[middle:]), \
                    f"{field}.0"
            yield "refused", _request(field, name.replace("a", "\u0430", 1)
                                      if "a" in name else "\u0430" + name), f"{field}.0"
            for spelled in (name.upper(), ".".join(_parts(name)), "".join(_parts(name)),
                            "-".join(name), "\u200b".join(name), _fullwidth(name),
                            name + "\ufeff", " " + name.title() + " "):
                yield "decided", _request(field, spelled), None
    for name in UNKNOWN_HIGH_RISK_TOOLS:
        yield "decided", body(tools=[name]), None
    for name in UNKNOWN_HIGH_RISK_EFFECTS:
        yield "decided", body(effects=[name]), None


def test_hostile_names_over_http_are_never_allowed(loopback: Loopback) -> None:
    cases = list(_http_cases())
    tally = Tally()
    misrefused = []
    for what, request, field in cases:
        response = loopback.post(request)
        answer = response.json()
        if response.status_code == 200:
            tally.add(request, answer["verdict"])
            if what == "refused":
                misrefused.append((request, answer["verdict"]))
        else:
            tally.add(request, str(response.status_code))
            error = answer["errors"][0]
            if (response.status_code, answer["code"], error["field"]) != (
                    422, "REQUEST_INVALID", field) or not error["type"].startswith("name_"):
                misrefused.append((request, answer))
    tally.assert_no_allow()
    assert not misrefused, misrefused[:3]
    assert tally.outcomes["422"] == sum(1 for what, _, _ in cases if what == "refused")
    assert len(cases) > 300


def test_the_issues_examples_over_http(loopback: Loopback) -> None:
    response = loopback.post(body(tools=["\u0000deploy.production"]))
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "tools.0"
    assert "U+0000" in error["message"]
    plain = loopback.post(body(tools=["db_schema_apply"])).json()
    for spelled in ("db.schema.apply", "dbschemaapply", "DB-Schema/Apply"):
        disguised = loopback.post(body(tools=[spelled])).json()
        assert (disguised["verdict"], disguised["buckets"], disguised["risk_score"]) == (
            plain["verdict"], plain["buckets"], plain["risk_score"])
    deletion = loopback.post(body(effects=["datadeletion"])).json()
    assert deletion["verdict"] != "ALLOW"
    assert deletion["buckets"] == ["destructive_data"]
