"""Lint a policy pack: every problem with ``file:line:column``, a stable code and a hint.

``stage0 policy validate`` runs this. It goes further than loading (:func:`compile_document`),
whose checks it reuses and maps to positions:

- the YAML is composed (not just loaded), so each pydantic error ``loc`` and each
  ``path.to.key: message`` problem of the loader is located at its key or value in the file;
- it keeps going after a schema error, so one run reports every problem it can find;
- it adds lint checks the loader does not make (empty, duplicate and overlapping change windows,
  aliases implying an undefined window, rules that would loosen the baseline or never enforce).

Lines and columns are 1-based. Errors make a pack unusable (exit 1); warnings are printed and do
not fail the run unless ``--strict`` is given.

Loosening: a custom rule can only *add* an issue whose effect is ``DENY``, ``DEFER`` or ``NONE``
(an advisory); nothing in a pack can turn a baseline DENY or DEFER into an ALLOW, so loosening is
impossible by construction. What a pack *can* write that reads as loosening is caught:
``effect: ALLOW`` (``PACK_LOOSENING_RULE``, an error), a ``pro_effect`` weaker than ``effect``
(strict mode would be laxer: ``PACK_LOOSENING_RULE``), and a rule that never blocks although it is
``HIGH`` or named like a block (``PACK_RULE_NOT_ENFORCED``, a warning; shadow rules are exempt,
since never blocking is what ``mode: shadow`` means).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from pydantic import BaseModel, ValidationError

from stage0.contract.codes import CODES
from stage0.contract.constraints import CONSTRAINT_KEYS
from stage0.policy.cel import VARIABLES, CelRuleError, compile_rule
from stage0.policy.loader import DEFAULT_PACK, PolicyError, compile_document, default_pack_text
from stage0.policy.matching import normalize_name
from stage0.policy.schema import CustomRule, PackDocument

Severity = Literal["error", "warning"]
Loc = tuple[str | int, ...]

#: Every problem code, its severity and what it means (documented in docs/policy.md).
PROBLEM_CODES: dict[str, tuple[Severity, str]] = {
    "PACK_UNREADABLE": ("error", "the file cannot be read"),
    "PACK_BAD_YAML": ("error", "not YAML, several documents, or not a mapping at the top"),
    "PACK_DUPLICATE_KEY": ("error", "a key appears twice in one mapping; YAML keeps the last"),
    "PACK_UNKNOWN_KEY": ("error", "a key the format does not have (a typo, usually)"),
    "PACK_MISSING_KEY": ("error", "a required key is absent"),
    "PACK_BAD_VALUE": ("error", "a value of the wrong type or outside its range"),
    "PACK_BAD_TIMEZONE": ("error", "not an IANA time zone"),
    "PACK_BAD_CEL": ("error", "a rule condition does not compile or does not return a bool"),
    "PACK_BUILTIN_CODE": ("error", "a rule reuses a built-in issue code"),
    "PACK_UNKNOWN_CONSTRAINT": ("error", "a `constraint_aliases` key is not a constraint key"),
    "PACK_UNKNOWN_WINDOW": ("error", "an alias implies a change window the pack does not define"),
    "PACK_EMPTY_WINDOW": ("error", "a change window with no days, or with `start` equal to `end`"),
    "PACK_DUPLICATE_WINDOW": ("error", "two window names that fold to the same name"),
    "PACK_OVERLAPPING_WINDOWS": ("warning", "two windows are open at the same time"),
    "PACK_LOOSENING_RULE": ("error", "a rule that reads as loosening: ALLOW, weaker pro_effect"),
    "PACK_RULE_NOT_ENFORCED": ("warning", "a HIGH or blocking-named rule whose effect is NONE"),
    "PACK_BAD_EXTENDS": ("error", "`extends:` names a pack other than the built-in one"),
    "PACK_LOOSENS_BASE": ("error", "an extending pack would loosen its base"),
    "PACK_INVALID": ("error", "any other problem the loader reports"),
}

_EFFECT_RANK = {"NONE": 0, "DEFER": 1, "DENY": 2}
_BLOCKING_WORDS = frozenset(
    {"DENY", "DENIED", "BLOCK", "BLOCKED", "FORBID", "FORBIDDEN", "PROHIBIT", "PROHIBITED",
     "DISALLOW", "DISALLOWED", "REJECT", "REJECTED", "NEVER"}
)
_BLOCKING_MESSAGE = re.compile(r"\b(is|are|be) (denied|blocked|forbidden|prohibited|rejected)\b"
                               r"|\bnot (allowed|permitted)\b", re.IGNORECASE)
# Reference weeks for overlap checks: one in winter and one in summer, so DST shifts count.
_REFERENCE_MONDAYS = (date(2026, 1, 5), date(2026, 7, 6))
_CEL_ERROR = re.compile(r"<input>:(\d+):(\d+): ([^\n]*)")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: where (1-based line and column), what (a stable code) and what to do."""

    code: str
    message: str
    source: str
    line: int = 1
    column: int = 1
    loc: Loc = ()
    hint: str | None = None
    severity: Severity = "error"

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}:{self.column}"

    def format(self) -> str:
        """``file:line:col: CODE message (hint)``; warnings say ``warning:`` before the message."""
        label = "warning: " if self.severity == "warning" else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{self.where}: {self.code} {label}{self.message}{hint}"


@dataclass(slots=True)
class Report:
    source: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_path(path: str | Path) -> Report:
    """Validate the pack at ``path``."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        report = Report(str(p))
        report.problems.append(
            Problem("PACK_UNREADABLE", f"cannot read the file: {reason}", str(p))
        )
        return report
    return validate_text(text, source=str(p))


def validate_default() -> Report:
    """Validate the built-in pack."""
    return validate_text(default_pack_text(), source=f"<builtin {DEFAULT_PACK}>")


def validate_text(text: str, *, source: str = "<text>") -> Report:
    """Validate pack ``text``; ``source`` names it in each problem."""
    return _Validator(source).run(text)


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source
        self.report = Report(source)
        self.root: yaml.Node | None = None
        self._seen: set[tuple[str, Loc]] = set()
        self.raw: dict[str, Any] = {}

    # -- reporting -------------------------------------------------------------------------

    def add(
        self,
        code: str,
        message: str,
        loc: Loc = (),
        *,
        hint: str | None = None,
        key: bool = False,
        mark: yaml.Mark | tuple[int, int] | None = None,
    ) -> None:
        """Record a problem at ``mark`` (0-based ``(line, column)`` or a YAML mark), or ``loc``."""
        if (code, loc) in self._seen:
            return
        self._seen.add((code, loc))
        if mark is None:
            mark = self._mark(loc, key=key)
        if isinstance(mark, yaml.Mark):
            mark = (mark.line, mark.column)
        line, column = (mark[0] + 1, mark[1] + 1) if mark is not None else (1, 1)
        self.report.problems.append(
            Problem(code, message, self.source, line, column, loc, hint, PROBLEM_CODES[code][0])
        )

    def _mark(self, loc: Loc, *, key: bool) -> yaml.Mark | None:
        """The position of ``loc``: its value, or its key when ``key``; else its deepest parent."""
        node = self._node(loc, key=key)
        return node.start_mark if node is not None else None

    def _node(self, loc: Loc, *, key: bool = False) -> yaml.Node | None:
        node = self.root
        if node is None:
            return None
        for i, part in enumerate(loc):
            last = i == len(loc) - 1
            child: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                        child = k if (last and key) else v
            elif (
                isinstance(node, yaml.SequenceNode) and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                child = node.value[part]
            if child is None:
                break
            node = child
        return node

    # -- the run ---------------------------------------------------------------------------

    def run(self, text: str) -> Report:
        raw = self._parse(text)
        if raw is None:
            return self.report
        self._duplicate_keys(self.root)
        if "extends" in raw:
            extended = self._extends(raw)
            if extended is None:
                self.report.problems.sort(key=lambda p: (p.line, p.column, p.code))
                return self.report
            raw = extended
        self.raw = raw
        doc = self._schema(raw)
        self._timezones(raw)
        self._aliases(raw)
        self._windows(raw)
        self._rules(raw)
        if doc is not None:
            self._compile(raw)
        self.report.problems.sort(key=lambda p: (p.line, p.column, p.code))
        return self.report

    def _parse(self, text: str) -> dict[str, Any] | None:
        loader = yaml.SafeLoader(text)
        try:
            self.root = loader.get_single_node()
            data = loader.construct_document(self.root) if self.root is not None else None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            self.add("PACK_BAD_YAML", f"not valid YAML: {problem}", mark=mark)
            return None
        finally:
            loader.dispose()
        if not isinstance(data, dict):
            self.add("PACK_BAD_YAML", "the pack must be a YAML mapping",
                     hint="a pack is a mapping that starts with `apiVersion: stage0/v1`")
            return None
        return data

    def _extends(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        """The pack merged over the built-in one (each loosening reported), or ``None``."""
        from stage0.policy.extends import BUILTIN, resolve  # noqa: PLC0415
        from stage0.policy.loader import default_pack_text  # noqa: PLC0415

        if raw["extends"] != BUILTIN:
            self.add("PACK_BAD_EXTENDS",
                     f"`extends: {raw['extends']}`: only the built-in pack can be extended",
                     ("extends",), hint=f"use `extends: {BUILTIN}`, or write a whole pack")
            return None
        merged, problems = resolve(raw, default_pack_text())
        for text in problems:
            path, _, message = text.removeprefix("extends: ").partition(": ")
            loc: Loc = tuple(int(p) if p.isdigit() else p for p in path.split("."))
            self.add("PACK_LOOSENS_BASE", f"{path}: {message} (the base pack is `{BUILTIN}`)",
                     loc, hint="an extending pack may only tighten its base")
        merged.pop("extends", None)
        return dict(merged)

    def _duplicate_keys(self, node: yaml.Node | None, loc: Loc = ()) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else None
                if name is not None and name in seen:
                    self.add("PACK_DUPLICATE_KEY", f"`{name}` appears twice; the last one wins",
                             (*loc, name, "<duplicate>"), mark=k.start_mark,
                             hint="merge the two entries into one")
                if name is not None:
                    seen.add(name)
                self._duplicate_keys(v, (*loc, name or "?"))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._duplicate_keys(item, (*loc, i))

    def _schema(self, raw: dict[str, Any]) -> PackDocument | None:
        try:
            return PackDocument.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                self._schema_error(err["type"], tuple(err["loc"]), err["msg"], err)
            return None

    def _schema_error(self, kind: str, loc: Loc, msg: str, err: Any) -> None:
        where = _dotted(loc[:-1]) or "the pack"
        if kind == "extra_forbidden":
            name = str(loc[-1])
            allowed = _allowed_keys(loc[:-1])
            self.add("PACK_UNKNOWN_KEY", f"unknown key `{name}` in {where}", loc, key=True,
                     hint=_did_you_mean(name, allowed) or _one_of(allowed))
        elif kind == "missing":
            self.add("PACK_MISSING_KEY", f"{where} needs `{loc[-1]}`", loc,
                     hint=f"add `{loc[-1]}:`")
        elif kind == "literal_error":
            value = err.get("input")
            expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            if (
                loc[:1] == ("rules",) and loc[-1] in ("effect", "pro_effect")
                and str(value).upper() == "ALLOW"
            ):
                self._allow_rule(loc)
                return
            if loc[:1] == ("change_windows",) and len(loc) == 4 and loc[2] == "days":
                hint = _did_you_mean(str(value).lower(), _DAYS) or _one_of(expected)
            else:
                hint = _did_you_mean(str(value), expected) or _one_of(expected)
            self.add("PACK_BAD_VALUE", f"{_dotted(loc)}: `{value}` is not allowed", loc,
                     hint=hint)
        elif kind == "too_short" and loc[:1] == ("change_windows",) and loc[-1:] == ("days",):
            self.add("PACK_EMPTY_WINDOW", f"change window `{loc[1]}` opens on no day", loc,
                     hint="list days such as `[mon, tue, wed, thu, fri]`")
        else:
            text = msg.removeprefix("Value error, ")
            self.add("PACK_BAD_VALUE", f"{_dotted(loc) or 'the pack'}: {text}", loc)

    def _allow_rule(self, loc: Loc) -> None:
        rules = self.raw.get("rules")
        rule = rules[loc[1]] if isinstance(rules, list) and isinstance(loc[1], int) else None
        code = rule.get("code", _dotted(loc[:2])) if isinstance(rule, dict) else _dotted(loc[:2])
        self.add(
            "PACK_LOOSENING_RULE",
            f"rule `{code}`: `{loc[-1]}: ALLOW` would loosen the baseline; a rule can only add "
            "a DENY, DEFER or advisory (NONE) issue",
            loc,
            hint="remove the rule: nothing in a pack turns a DENY or DEFER into an ALLOW",
        )

    # -- lint checks on the raw document (they run even when the schema fails) --------------

    def _timezones(self, raw: dict[str, Any]) -> None:
        self._zone(raw.get("timezone"), ("timezone",))
        for name, w in _items(raw.get("change_windows")):
            if isinstance(w, dict):
                self._zone(w.get("timezone"), ("change_windows", name, "timezone"))

    def _zone(self, name: Any, loc: Loc) -> ZoneInfo | None:
        if not isinstance(name, str):
            return None
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.add("PACK_BAD_TIMEZONE", f"`{name}` is not an IANA time zone", loc,
                     hint=_did_you_mean(name, _zones()) or "e.g. `Europe/Berlin` or `UTC`")
            return None

    def _aliases(self, raw: dict[str, Any]) -> None:
        windows = {normalize_name(str(n)): str(n) for n, _ in _items(raw.get("change_windows"))}
        for key, names in _items(raw.get("constraint_aliases")):
            loc: Loc = ("constraint_aliases", key)
            if key not in CONSTRAINT_KEYS:
                self.add("PACK_UNKNOWN_CONSTRAINT", f"`{key}` is not a constraint key", loc,
                         key=True, hint=_did_you_mean(str(key), CONSTRAINT_KEYS))
                continue
            if CONSTRAINT_KEYS[key] != "window" or not isinstance(names, list):
                continue
            for i, alias in enumerate(names):
                if not isinstance(alias, str) or "=" not in alias:
                    continue
                name, _, implied = alias.partition("=")
                implied = implied.strip()
                if implied and normalize_name(implied) not in windows:
                    self.add(
                        "PACK_UNKNOWN_WINDOW",
                        f"alias `{name.strip()}` implies change window `{implied}`, which the "
                        "pack does not define",
                        (*loc, i),
                        hint=_did_you_mean(implied, list(windows.values()))
                        or "define it under `change_windows`",
                    )

    def _windows(self, raw: dict[str, Any]) -> None:
        pack_zone = raw.get("timezone", "UTC")
        folded: dict[str, str] = {}
        spans: dict[str, list[Span]] = {}
        for name, w in _items(raw.get("change_windows")):
            loc: Loc = ("change_windows", name)
            key = normalize_name(str(name))
            if key in folded:
                self.add("PACK_DUPLICATE_WINDOW",
                         f"window `{name}` and window `{folded[key]}` are both `{key}`; "
                         "the later one replaces the earlier", loc, key=True,
                         hint="names fold case, spaces and hyphens: rename or merge them")
            folded[key] = str(name)
            if not isinstance(w, dict):
                continue
            start, end = _hhmm(w.get("start")), _hhmm(w.get("end"))
            days = w.get("days")
            if start is None or end is None or not isinstance(days, list):
                continue
            if start == end:
                self.add(
                    "PACK_EMPTY_WINDOW",
                    f"change window `{name}` opens and closes at {start:%H:%M}: it is empty",
                    (*loc, "end"),
                    hint="a window past midnight ends before it starts (`22:00`-`02:00`)",
                )
                continue
            zone_name = w.get("timezone") or pack_zone
            try:
                zone = ZoneInfo(zone_name) if isinstance(zone_name, str) else None
            except (ZoneInfoNotFoundError, ValueError):
                zone = None
            indexes = {_DAYS.index(d) for d in days if d in _DAYS}
            if zone is not None and indexes:
                spans[str(name)] = _spans(indexes, start, end, zone)
        names = sorted(spans)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if _overlap(spans[a], spans[b]):
                    self.add(
                        "PACK_OVERLAPPING_WINDOWS",
                        f"change windows `{a}` and `{b}` are open at the same time",
                        ("change_windows", b),
                        key=True,
                        hint="fine if meant; a request naming both must fall in both",
                    )

    def _rules(self, raw: dict[str, Any]) -> None:
        rules = raw.get("rules")
        if not isinstance(rules, list):
            return
        defaults = CustomRule.model_fields
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict):
                continue
            loc: Loc = ("rules", i)
            code = str(rule.get("code", f"rules[{i}]"))
            effect = str(rule.get("effect", defaults["effect"].default))
            pro_effect = str(rule.get("pro_effect") or effect)
            severity = str(rule.get("severity", defaults["severity"].default))
            for key, value in (("effect", effect), ("pro_effect", pro_effect)):
                if value.upper() == "ALLOW" and key in rule:
                    self._allow_rule((*loc, key))
            if code in CODES:
                self.add("PACK_BUILTIN_CODE", f"`{code}` is a built-in issue code", (*loc, "code"),
                         hint="choose a code of your own, such as `ACME_" + code + "`")
            condition = rule.get("condition")
            if isinstance(condition, str):
                try:
                    compile_rule(code, condition, when_context=(), severity="HIGH", effect="DENY",
                                 pro_effect=None, message="", remediation="", question=None)
                except CelRuleError as exc:
                    self._bad_cel(code, str(exc), (*loc, "condition"))
            if effect in _EFFECT_RANK and pro_effect in _EFFECT_RANK:
                if _EFFECT_RANK[pro_effect] < _EFFECT_RANK[effect]:
                    self.add(
                        "PACK_LOOSENING_RULE",
                        f"rule `{code}`: `pro_effect: {pro_effect}` is weaker than "
                        f"`effect: {effect}`, so a strict (`pro`) request would be let off",
                        (*loc, "pro_effect"),
                        hint=f"`pro` can only tighten: use `pro_effect: {effect}` or drop it",
                    )
                elif pro_effect == "NONE" and rule.get("mode") != "shadow" and (
                    severity == "HIGH" or _named_like_a_block(code, rule.get("message"))
                ):
                    why = "is HIGH" if severity == "HIGH" else "reads like a block"
                    self.add(
                        "PACK_RULE_NOT_ENFORCED",
                        f"rule `{code}` {why} but its effect is NONE: it is reported and "
                        "never blocks",
                        (*loc, "effect") if "effect" in rule else loc,
                        hint="set `effect: DENY` or `DEFER` to enforce it, or lower `severity`",
                    )

    def _bad_cel(self, code: str | None, error: str, loc: Loc) -> None:
        """One line per CEL error, placed at the offending character when the YAML allows."""
        match = _CEL_ERROR.search(error)
        if match is None:
            self.add("PACK_BAD_CEL", " ".join(error.split()), loc, hint=_cel_hint(error))
            return
        line, column, what = int(match.group(1)), int(match.group(2)), match.group(3)
        what = what.replace(" (in container '')", "")
        name = code or error.partition("`")[2].partition("`")[0] or _dotted(loc)
        node = self._node(loc)
        mark: tuple[int, int] | None = None
        if (
            isinstance(node, yaml.ScalarNode) and line == 1 and loc and loc[-1] == "condition"
            and node.style in (None, '"', "'") and node.start_mark.line == node.end_mark.line
        ):
            quote = 1 if node.style else 0
            mark = (node.start_mark.line, node.start_mark.column + quote + column - 1)
        self.add("PACK_BAD_CEL", f"rule `{name}`: {what}", loc, hint=_cel_hint(error), mark=mark)

    # -- the loader's own checks -------------------------------------------------------------

    def _compile(self, raw: dict[str, Any]) -> None:
        try:
            compile_document(raw, source=self.source)
        except PolicyError as exc:
            for text in exc.problems:
                self._loader_problem(text)

    def _loader_problem(self, text: str) -> None:
        path, sep, message = text.partition(": ")
        if not sep or " " in path:
            path, message = "", text
        loc: Loc = tuple(int(p) if p.isdigit() else p for p in path.split(".")) if path else ()
        if loc[:1] == ("rules",) and loc[-1:] == ("condition",):
            self._bad_cel(None, message, loc)
        elif "is a built-in code" in message:
            self.add("PACK_BUILTIN_CODE", message, loc)
        elif "is not an IANA time zone" in message:
            self.add("PACK_BAD_TIMEZONE", message, loc)
        elif "is not a constraint key" in message:
            self.add("PACK_UNKNOWN_CONSTRAINT", message, loc, key=True)
        elif not any(p.loc[: len(loc)] == loc and loc for p in self.report.problems):
            self.add("PACK_INVALID", message, loc)


# -- helpers ------------------------------------------------------------------------------------


def _dotted(loc: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def _items(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k), v


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def _one_of(choices: Iterable[str]) -> str | None:
    names = list(choices)
    if not names or len(names) > 12:
        return None
    return "one of " + ", ".join(f"`{n}`" for n in names)


def _allowed_keys(loc: Loc) -> list[str]:
    """The field names of the model at ``loc`` in :class:`PackDocument` (empty if not a model)."""
    target: Any = PackDocument
    for part in loc:
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
def _zones() -> tuple[str, ...]:
    return tuple(sorted(available_timezones()))


def _hhmm(value: Any) -> time | None:
    if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        return None
    return time.fromisoformat(value)


Span = tuple[datetime, datetime]


def _spans(days: set[int], start: time, end: time, zone: ZoneInfo) -> list[Span]:
    """The window's openings in the reference weeks, in UTC."""
    spans = []
    for monday in _REFERENCE_MONDAYS:
        for offset in range(-1, 8):  # the day before: an overnight window reaches into Monday
            day = monday + timedelta(days=offset)
            if day.weekday() not in days:
                continue
            opens = datetime.combine(day, start, tzinfo=zone)
            closes_day = day if end > start else day + timedelta(days=1)
            closes = datetime.combine(closes_day, end, tzinfo=zone)
            spans.append((opens.astimezone(UTC), closes.astimezone(UTC)))
    return spans


def _overlap(a: list[Span], b: list[Span]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def _named_like_a_block(code: str, message: Any) -> bool:
    if _BLOCKING_WORDS & set(code.upper().split("_")):
        return True
    return isinstance(message, str) and bool(_BLOCKING_MESSAGE.search(message))


def _cel_hint(message: str) -> str:
    match = re.search(r"undeclared reference to '([^']+)'", message)
    if match:
        guess = _did_you_mean(match.group(1).split(".")[0], _cel_variables())
        if guess:
            return guess
    return "variables: " + ", ".join(f"`{v}`" for v in _cel_variables())


def _cel_variables() -> list[str]:
    return list(VARIABLES)


__all__ = [
    "PROBLEM_CODES",
    "Problem",
    "Report",
    "validate_default",
    "validate_path",
    "validate_text",
]
