"""Load a policy pack from YAML, validate it and compile it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, datetime, time
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import rfc8785
import yaml
from pydantic import ValidationError

from stage0.contract.codes import CODES
from stage0.contract.constraints import CONSTRAINT_KEYS
from stage0.policy.cel import CelRuleError, compile_rule
from stage0.policy.compiled import (
    DEFAULT_BINDS,
    ApprovalRule,
    BreakGlassRule,
    CompiledBucket,
    CompiledPolicy,
    CompiledRequire,
    RuleIndex,
    index_effect_buckets,
)
from stage0.policy.constraint_values import FALSE, TRUE, VALUE_PARSERS
from stage0.policy.extends import BUILTIN, resolve
from stage0.policy.lint.codes import Located, Location, YamlPath, dotted, lint_issue, schema_code
from stage0.policy.matching import GlobMatcher, normalize_name, squash
from stage0.policy.schema import (
    ApprovalRules,
    ConstraintValue,
    PackDocument,
    RequireRule,
    parse_duration,
)
from stage0.policy.windows import DAY_INDEX, CompiledWindow

DEFAULT_PACK = "stage0-policy-pack.yaml"
STRICT_PACK = "stage0-strict.yaml"
PRESETS = {
    "default": DEFAULT_PACK, "stage0-policy-pack": DEFAULT_PACK,
    "strict": STRICT_PACK, "stage0-strict": STRICT_PACK,
}
"""Names that ``--policy`` / ``STAGE0_POLICY`` take for a pack shipped in the package. They
always name the shipped pack; a pack file has a ``.yaml`` (or ``.yml``) name."""


class PolicyError(ValueError):
    """The pack cannot be loaded; ``problems`` names each one (``buckets.x.tools: ...``).

    ``issues`` has the same problems as coded lint issues located by their YAML path (the loader
    knows no line or column; ``stage0 policy validate`` adds them). It is empty for the errors
    of a pack set (:mod:`stage0.policy.packset`), which are not about one document.
    """

    def __init__(self, source: str, problems: list[str],
                 issues: Sequence[Located] = ()) -> None:
        self.source = source
        self.problems = problems
        self.issues = tuple(issues)
        super().__init__(f"policy pack {source} is invalid: " + "; ".join(problems))


class _Problems:
    """The problems of one document, as text and as coded issues."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.texts: list[str] = []
        self.issues: list[Located] = []

    def add(self, code: str, path: YamlPath, message: str, *, text: str | None = None) -> None:
        """``text``: the problem's whole wording in :attr:`PolicyError.problems`, if not
        ``path: message``."""
        self.texts.append(text if text is not None else f"{dotted(path) or '(pack)'}: {message}")
        self.issues.append(Located(lint_issue(code, message), Location(self.source, path=path)))

    def error(self) -> PolicyError:
        return PolicyError(self.source, self.texts, self.issues)


def _fail(source: str, code: str, message: str, path: YamlPath = ()) -> PolicyError:
    """A one-problem error; ``message`` is also its text (with no path prefix)."""
    return PolicyError(source, [message],
                       [Located(lint_issue(code, message), Location(source, path=path))])


def default_pack_text() -> str:
    return resources.files("stage0.policy.packs").joinpath(DEFAULT_PACK).read_text("utf-8")


def preset_file(name: str | Path) -> str | None:
    """The shipped pack file that a preset name (``strict``, ``default``) names, else ``None``."""
    return PRESETS.get(str(name))


def preset_path(name: str | Path) -> Path | None:
    """Where the shipped pack of a preset name is on disk (``None``: not a preset name)."""
    file = preset_file(name)
    if file is None:
        return None
    return Path(str(resources.files("stage0.policy.packs").joinpath(file)))


def policy_source(path: str) -> str:
    """``path`` as a setting passed on to worker processes: a preset name as it is, a file or
    directory as an absolute path."""
    return path if preset_file(path) is not None else str(Path(path).resolve())


def load_policy(path: str | Path | None = None) -> CompiledPolicy:
    """Load ``path`` (or the default pack shipped in the package, or the shipped pack a preset
    name such as ``strict`` names) and compile it."""
    if path is None:
        return compile_text(default_pack_text(), source=f"<builtin {DEFAULT_PACK}>")
    preset = preset_file(path)
    if preset is not None:
        text = resources.files("stage0.policy.packs").joinpath(preset).read_text("utf-8")
        return compile_text(text, source=f"<builtin {preset}>")
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as exc:
        raise _fail(str(p), "PACK_UNREADABLE",
                    f"cannot read the file: {exc.strerror or exc}") from None
    return compile_text(text, source=str(p))


def compile_text(text: str, *, source: str = "<text>") -> CompiledPolicy:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(source, "PACK_BAD_YAML", f"not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise _fail(source, "PACK_BAD_YAML", "the pack must be a YAML mapping")
    if "extends" in raw:
        if raw["extends"] != BUILTIN:
            raise _fail(source, "PACK_BAD_EXTENDS", f"extends: only `{BUILTIN}` (the built-in "
                        f"pack) can be extended, not `{raw['extends']}`", ("extends",))
        raw, loosenings = resolve(raw, default_pack_text())
        if loosenings:
            found = _Problems(source)
            for loosening in loosenings:
                found.add("PACK_LOOSENS_BASE", loosening.path, loosening.message,
                          text=f"extends: {loosening}")
            raise found.error()
    return compile_document(raw, source=source)


def compile_document(raw: dict[str, Any], *, source: str = "<document>") -> CompiledPolicy:
    problems = _Problems(source)
    try:
        doc = PackDocument.model_validate(raw)
    except ValidationError as exc:
        for e in exc.errors(include_url=False):
            problems.add(schema_code(e["type"]), tuple(e["loc"]), e["msg"])
        raise problems.error() from None
    try:
        sha = hashlib.sha256(rfc8785.dumps(_json_form(raw))).hexdigest()
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise _fail(source, "PACK_INVALID",
                    f"the pack is not representable as JSON: {exc}") from None

    zone = _zone(doc.timezone, ("timezone",), problems)
    windows: dict[str, CompiledWindow] = {}
    for name, w in doc.change_windows.items():
        wzone = (
            _zone(w.timezone, ("change_windows", name, "timezone"), problems) if w.timezone
            else zone
        )
        windows[normalize_name(name)] = CompiledWindow(
            name=normalize_name(name),
            days=frozenset(DAY_INDEX[d] for d in w.days),
            start=time.fromisoformat(w.start),
            end=time.fromisoformat(w.end),
            zone=wzone or ZoneInfo("UTC"),
            holidays=frozenset(w.holidays),
        )

    aliases: dict[str, tuple[str, str | None]] = {k: (k, None) for k in CONSTRAINT_KEYS}
    for key, names in doc.constraint_aliases.items():
        if key not in CONSTRAINT_KEYS:
            problems.add("PACK_UNKNOWN_CONSTRAINT", ("constraint_aliases", key),
                         f"`{key}` is not a constraint key")
            continue
        for alias in names:
            name, _, implied = alias.partition("=")
            aliases[normalize_name(name)] = (key, implied.strip() or None)

    default_evidence = doc.approval.evidence

    def approval_rule(rules: ApprovalRules, pack: ApprovalRule | None = None) -> ApprovalRule:
        """A rule; a bucket's (``pack``: the pack's own) binds the pack's fields too, and
        has the pack's ``bound_to`` unless it sets its own."""
        return ApprovalRule(
            quorum=rules.quorum,
            approver_roles=frozenset(normalize_name(r) for r in rules.approver_roles),
            approver_mfa=rules.approver_mfa,
            expires_in=parse_duration(rules.expires_in),
            execute_within=parse_duration(rules.execute_within),
            bound_to=rules.bound_to or (pack.bound_to if pack is not None else "key"),
            binds=tuple(sorted(set(DEFAULT_BINDS) | set(rules.binds or ())
                               | set(pack.binds if pack is not None else ()))),
        )

    default_approvals = approval_rule(doc.approvals)
    buckets = tuple(
        CompiledBucket(
            name=name,
            description=b.description,
            risk_weight=b.risk_weight,
            tool_matcher=GlobMatcher(b.tools),
            side_effects=frozenset(normalize_name(s) for s in b.side_effects),
            approval=b.require.approval,
            approval_evidence=b.require.approval_evidence or default_evidence,
            approvals=(approval_rule(b.require.approvals, default_approvals)
                       if b.require.approvals is not None else default_approvals),
            environment=b.require.environment,
            rollback_plan=b.require.rollback_plan,
            mfa=b.require.mfa,
            ticket=b.require.ticket,
            effect_matcher=GlobMatcher(b.side_effects),
        )
        for name, b in doc.buckets.items()
    )

    requires = tuple(
        _compile_require(i, r, aliases, windows, doc, problems) for i, r in enumerate(doc.require))
    if doc.mfa.evidence == "verified":
        without = ([("approvals", "approver_mfa")] if not doc.approvals.approver_mfa else []) + [
            ("buckets", name, "require", "approvals", "approver_mfa")
            for name, b in doc.buckets.items()
            if b.require.approvals is not None and not b.require.approvals.approver_mfa]
        for path in without:
            problems.add("PACK_BAD_VALUE", ("mfa", "evidence"),
                         f"`mfa.evidence: verified` counts only the approvers' MFA, so "
                         f"`{dotted(path)}` must be true")

    rules = []
    for i, r in enumerate(doc.rules):
        if r.code in CODES:
            problems.add("PACK_BUILTIN_CODE", _rule_path(raw, i, "code", "id"),
                         f"`{r.code}` is a built-in code; choose another")
            continue
        try:
            rules.append(
                compile_rule(
                    r.code,
                    r.condition,
                    when_context=tuple(r.when_context),
                    severity=r.severity,
                    effect=r.effect,
                    pro_effect=r.pro_effect,
                    message=r.message,
                    remediation=r.remediation,
                    question=r.question,
                    shadow=r.mode == "shadow",
                    index=i,
                    tool_globs=tuple(r.tools),
                    buckets=frozenset(r.buckets),
                )
            )
        except CelRuleError as exc:
            problems.add("PACK_BAD_CEL", _rule_path(raw, i, "condition", "when"),
                         f"rule `{exc.code}`: {exc.summary}", text=f"rules.{i}.condition: {exc}")
    if problems.issues:
        raise problems.error()

    return CompiledPolicy(
        name=doc.name,
        version=doc.version,
        sha256=sha,
        document=doc,
        production_environments=frozenset(normalize_name(e) for e in doc.production_environments),
        approval_max_age=parse_duration(doc.approval.max_age),
        approval_future_skew=parse_duration(doc.approval.future_skew),
        mfa_max_age=parse_duration(doc.mfa.max_age),
        windows=MappingProxyType(windows),
        write_class=frozenset(normalize_name(s) for s in doc.side_effects.write_class),
        sensitive_tool=GlobMatcher(doc.sensitive_tools.patterns),
        sensitive_cleared_by=frozenset(normalize_name(s) for s in doc.sensitive_tools.cleared_by),
        min_goal_words=doc.value_signal.min_goal_words,
        action_verbs=frozenset(v.lower() for v in doc.value_signal.action_verbs),
        aliases=MappingProxyType(aliases),
        buckets=buckets,
        risk=doc.risk,
        rules=tuple(rules),
        timeout_seconds=doc.evaluation.timeout_ms / 1000.0,
        default_approvals=default_approvals,
        freezes=tuple(doc.freezes),
        token_ttl=parse_duration(doc.execution_tokens.ttl),
        token_issuer=doc.execution_tokens.issuer,
        break_glass=BreakGlassRule(
            roles=frozenset(normalize_name(r) for r in doc.break_glass.roles if r.strip()),
            mfa=doc.break_glass.mfa,
            min_reason_length=doc.break_glass.min_reason_length,
            expires_in=parse_duration(doc.break_glass.expires_in),
        ) if doc.break_glass.enabled else None,
        approval_evidence=doc.approval.evidence,
        mfa_evidence=doc.mfa.evidence,
        rollback_evidence=doc.evidence.rollback_plan,
        ticket_evidence=doc.evidence.ticket,
        requires=requires,
        _effect_buckets=index_effect_buckets(buckets),
        _write_keys=frozenset(squash(normalize_name(s)) for s in doc.side_effects.write_class),
        _bucket_index=MappingProxyType({b.name: b for b in buckets}),
        _rule_index=RuleIndex(tuple(rules)),
    )


NOT_REQUIRABLE = frozenset({"sandbox", "dry_run", "allowlist"})
"""Constraint keys that are the caller's declaration of how it runs: nothing the server checks,
so an operator cannot require them in a ``require`` rule."""


def _constraint_text(value: ConstraintValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _compile_require(index: int, rule: RequireRule,
                     aliases: dict[str, tuple[str, str | None]],
                     windows: dict[str, CompiledWindow], doc: PackDocument,
                     problems: _Problems) -> CompiledRequire:
    """One ``require`` rule, its constraints as constraint strings; problems are reported."""
    where: YamlPath = ("require", index)
    for name in rule.buckets:
        if name not in doc.buckets:
            problems.add("PACK_BAD_VALUE", (*where, "buckets"),
                         f"`{name}` is not a bucket of this pack")
    texts: list[str] = []
    for key, raw_value in rule.constraints.items():
        path: YamlPath = (*where, "constraints", key)
        resolved = aliases.get(normalize_name(key))
        if resolved is None:
            problems.add("PACK_UNKNOWN_CONSTRAINT", path, f"`{key}` is not a constraint key")
            continue
        canon, implied = resolved
        if canon in NOT_REQUIRABLE:
            problems.add("PACK_BAD_VALUE", path,
                         f"`{canon}` is the caller's declaration of how it runs; the server "
                         "cannot check it, so it cannot be required")
            continue
        value = _constraint_text(raw_value).strip()
        if implied is not None and value.lower() in TRUE:
            value = implied
        if value.lower() in FALSE and CONSTRAINT_KEYS[canon] == "flag":
            problems.add("PACK_BAD_VALUE", path,
                         f"`{key}: {value}` requires nothing; leave it out")
            continue
        try:
            if CONSTRAINT_KEYS[canon] != "flag" and not value:
                raise ValueError(f"`{canon}` needs a value")
            typed, shown = VALUE_PARSERS[CONSTRAINT_KEYS[canon]](canon, value)
        except ValueError as exc:
            message = str(exc)
            problems.add("PACK_BAD_VALUE", path, message if message.startswith("`")
                         else f"`{canon}` has an invalid value `{value}`")
            continue
        if canon == "allowed_change_window" and typed not in windows:
            problems.add("PACK_UNKNOWN_WINDOW", path,
                         f"change window `{typed}` is not defined in `change_windows`")
            continue
        texts.append(f"{canon}: {shown}")
    envs = frozenset(normalize_name(e) for e in rule.environments if e.strip())
    return CompiledRequire(
        index=index,
        name=rule.name,
        buckets=frozenset(rule.buckets),
        tool_matcher=GlobMatcher(rule.tools) if rule.tools else None,
        environments=envs,
        production="production" in envs,
        constraints=tuple(texts),
    )


def _json_form(value: Any) -> Any:
    """The document as JSON sees it: YAML's unquoted dates and times become ISO strings."""
    if isinstance(value, dict):
        return {str(k): _json_form(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_form(v) for v in value]
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


def _zone(name: str | None, path: YamlPath, problems: _Problems) -> ZoneInfo | None:
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        problems.add("PACK_BAD_TIMEZONE", path, f"`{name}` is not an IANA time zone")
        return None


def _rule_path(raw: dict[str, Any], index: int, field: str, alias: str) -> YamlPath:
    """The YAML path of rule ``index``'s ``field``, under the key the document uses for it."""
    rule = raw["rules"][index]
    key = alias if alias in rule and field not in rule else field
    return ("rules", index, key)
