"""The engine: one request in, one decision out. ``evaluate()`` never raises for policy problems.

Clock and id factory are injected (``stage0.testing`` has fixed ones), so the same inputs give
byte-identical decisions. Anything that goes wrong inside evaluation becomes ``verdict: DENY``,
``decision: ERROR`` with ``POLICY_EVALUATION_FAILED`` (CONTRACT section 3).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import orjson

from stage0.contract.codes import CODES
from stage0.contract.effects import is_stricter_verdict
from stage0.contract.request import CheckRequest, parse_request
from stage0.contract.response import Decision, ResponseBody
from stage0.engine import checks
from stage0.engine.approvals import (
    ApprovalResolver,
    Binding,
    Requester,
    check_approval,
    report_break_glass,
)
from stage0.engine.constraints import ConstraintParser
from stage0.engine.digest import (
    binding_digest,
    bound_fields,
    canonical_json,
    sha256_hex,
    sorted_action_digest,
)
from stage0.engine.evidence import EvidenceResolver
from stage0.engine.facts import Classifier, Facts, derive_facts
from stage0.engine.findings import Findings
from stage0.engine.loops import check_loops
from stage0.engine.respond import failed, respond
from stage0.engine.rules import check_custom_rules
from stage0.engine.runstate import RunState
from stage0.policy.compiled import CompiledPolicy
from stage0.policy.packset import PackSet

Clock = Callable[[], datetime]
IdFactory = Callable[[], str]


def system_clock() -> datetime:
    return datetime.now(UTC)


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid4_id(_urandom: Callable[[int], bytes] = os.urandom) -> str:
    """A random (version 4, RFC 4122 variant) UUID in its canonical text form: what
    ``str(uuid.uuid4())`` returns, from the same 16 random bytes, without building a ``UUID``."""
    h = _urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class Engine:
    """Evaluates ``/check`` requests against one compiled policy.

    Building an engine prepares the policy once (constraint parser and caches); evaluation
    touches only that prepared state plus the injected run state and approval resolver.
    """

    def __init__(
        self,
        policy: CompiledPolicy | None,
        *,
        run_state: RunState | None = None,
        approvals: ApprovalResolver | None = None,
        clock: Clock = system_clock,
        ids: IdFactory = uuid4_id,
        held: tuple[CompiledPolicy, ...] = (),
        evidence: EvidenceResolver | None = None,
        binds: frozenset[str] | None = None,
    ) -> None:
        """``held``: other pack versions, each deciding the requests that pin it with
        ``policy_pack_version`` (see :mod:`stage0.policy.packset`). ``evidence``: the answers
        of the evidence source, looked up before evaluation (:mod:`stage0.engine.evidence`)."""
        self.policy = policy
        self.run_state = run_state
        self.approvals = approvals
        self.evidence = evidence
        self._clock = clock
        self._ids = ids
        self._version = policy.policy_version if policy is not None else "none"
        self._parser = ConstraintParser(policy) if policy is not None else None
        self._classify = Classifier(policy) if policy is not None else None
        self._goals: dict[str, tuple[str, ...]] = {}
        self._bindings: dict[tuple[object, ...], str] = {}
        """Binding digests by action digest and bound values (agents repeat their requests)."""
        self._packs = PackSet(policy, held) if policy is not None else None
        self.binds: tuple[str, ...] = tuple(sorted(binds if binds is not None else {
            name for p in (policy, *held) if p is not None for name in p.bound_field_names()}))
        """What a server-side approval is bound to besides the action digest: every field any
        approval rule of any pack held here binds, so that a request pinned to a held version
        and the active version (its ceiling) compute the same binding."""
        self._held = {
            p.policy_version: Engine(p, run_state=run_state, approvals=approvals, clock=clock,
                                     ids=ids, evidence=evidence, binds=frozenset(self.binds))
            for p in held if policy is None or p.policy_version != policy.policy_version
        }
        self._pinned_from: str | None = None
        """Set on the ceiling engine: the held version a request pinned (see ``evaluate``)."""
        self._ceiling: Engine | None = None

    # -- entry points -----------------------------------------------------------------------

    def check(
        self,
        body: bytes | str | dict[str, Any],
        *,
        at: datetime | None = None,
        request_id: str | None = None,
        tenant: str | None = None,
    ) -> Decision:
        """Validate ``body`` and evaluate it.

        Raises :class:`~stage0.contract.RequestValidationError` for a request that does not
        match the contract; every other outcome is a decision.

        ``input_sha256`` is the SHA-256 of the body bytes exactly as received; for a mapping,
        of its RFC 8785 canonical JSON (which is what the SDK sends over the wire).
        """
        request = parse_request(body)
        if isinstance(body, dict):
            digest = _mapping_sha256(body)
        else:
            digest = sha256_hex(body.encode() if isinstance(body, str) else body)
        return self.evaluate(
            request, at=at, request_id=request_id, tenant=tenant, input_sha256=digest
        )

    def check_bytes(self, body: bytes, *, at: datetime | None = None) -> bytes:
        """Request bytes to response bytes (what the HTTP layer and the benchmark do)."""
        return self.check(body, at=at).to_json()

    def evaluate(
        self,
        request: CheckRequest,
        *,
        at: datetime | None = None,
        request_id: str | None = None,
        tenant: str | None = None,
        input_sha256: str | None = None,
        requester: Requester | None = None,
    ) -> Decision:
        """Decide a validated request. Never raises: failures are fail-closed decisions.

        ``requester``: the authenticated key (and its principal) asking, which a server-side
        approval must belong to (the pack's ``approvals.bound_to``); ``None`` in process,
        where there is no key."""
        if self._held and request.policy_pack_version is not None and self._packs is not None:
            pinned = self._packs.find(request.policy_pack_version)
            if pinned is not None and pinned.policy_version in self._held:
                return self._pinned(pinned.policy_version, request, at, request_id, tenant,
                                    input_sha256, requester)
        started = perf_counter()
        now = self._clock()
        at = at if at is not None else now
        rid = request_id or self._ids()
        if input_sha256 is None:
            input_sha256 = _mapping_sha256(request.model_dump(mode="json", exclude_unset=True))
        if tenant is None:
            # In-process use (CLI, SDK): the caller's own claim, else the default tenant. The
            # service always passes the tenant of the authenticated key.
            ctx_tenant = request.context.tenant_id if request.context is not None else None
            tenant = ctx_tenant or "default"
        policy = self.policy
        if policy is None or self._parser is None:
            return self._failed(request, rid, now, at, input_sha256, "POLICY_NOT_LOADED", None)
        try:
            body = self._evaluate(request, policy, self._parser, rid, now, at, tenant,
                                  input_sha256, requester)
            elapsed = perf_counter() - started
            if elapsed > policy.timeout_seconds:
                return self._failed(
                    request, rid, now, at, input_sha256, "POLICY_EVALUATION_FAILED",
                    f"Policy evaluation took {elapsed * 1000:.1f} ms, over the pack's limit of "
                    f"{policy.timeout_seconds * 1000:g} ms",
                )
            return Decision(body)
        except Exception as exc:  # noqa: BLE001 - fail closed on anything, by contract
            return self._failed(
                request, rid, now, at, input_sha256, "POLICY_EVALUATION_FAILED",
                f"Policy evaluation failed: {str(exc)[:300] or type(exc).__name__}",
            )

    def _pinned(self, version: str, request: CheckRequest, at: datetime | None,
                request_id: str | None, tenant: str | None,
                input_sha256: str | None, requester: Requester | None) -> Decision:
        """A request pinned to a held version: that version decides, unless the active pack
        is stricter for this action (a pin never loosens the active policy). The active pack
        is evaluated without run state (the pinned evaluation already counted the call)."""
        decision = self._held[version].evaluate(
            request, at=at, request_id=request_id, tenant=tenant, input_sha256=input_sha256,
            requester=requester)
        if self._ceiling is None:
            self._ceiling = Engine(self.policy, run_state=None, approvals=self.approvals,
                                   clock=self._clock, ids=self._ids, evidence=self.evidence,
                                   binds=frozenset(self.binds))
        self._ceiling._pinned_from = version
        ceiling = self._ceiling.evaluate(request, at=at, request_id=decision.request_id,
                                         tenant=tenant, input_sha256=input_sha256,
                                         requester=requester)
        if is_stricter_verdict(ceiling.verdict, decision.verdict):
            return ceiling
        return decision

    def binding_of(self, request: CheckRequest,
                   action_digest: str) -> tuple[str, dict[str, Any]]:
        """The binding digest of a server-side approval for ``request`` and its bound field
        values (docs/approvals.md, "What an approval is bound to")."""
        fields = bound_fields(request.goal, request.context, self.binds)
        # in ``self.binds`` order; with each value's type, since 1 == 1.0 == True in a key
        key = (action_digest, *((k, type(v), v) for k, v in fields.items()))
        try:
            hit = self._bindings.get(key)
        except TypeError:  # a list or an object among the values: not cached
            return binding_digest(action_digest, fields), fields
        if hit is None:
            hit = binding_digest(action_digest, fields)
            if len(self._bindings) < 4096:
                self._bindings[key] = hit
        return hit, fields

    def action_digest(self, request: CheckRequest) -> str | None:
        """The ``action_digest`` this engine's active pack gives ``request`` (what the service
        uses to read a batch's approval requests in one query); ``None`` without a pack."""
        policy, classify = self.policy, self._classify
        if policy is None or classify is None:
            return None
        f = derive_facts(request, policy, at=_EPOCH, tenant="",
                         classification=classify(request), classifier=classify)
        return _digest_of(request, f)

    # -- evaluation -------------------------------------------------------------------------

    def _goal_problems(self, goal: str, policy: CompiledPolicy) -> tuple[str, ...]:
        hit = self._goals.get(goal)
        if hit is None:
            hit = checks.goal_problems(goal, policy)
            if len(self._goals) < 4096:
                self._goals[goal] = hit
        return hit

    def _evaluate(
        self,
        request: CheckRequest,
        policy: CompiledPolicy,
        parser: ConstraintParser,
        rid: str,
        now: datetime,
        at: datetime,
        tenant: str,
        input_sha256: str,
        requester: Requester | None = None,
    ) -> ResponseBody:
        classify = self._classify
        f = derive_facts(  # positional: keyword arguments cost time on every decision
            request, policy, at, tenant, classify(request) if classify is not None else None,
            classify,
        )
        ctx = f.context
        digest = _digest_of(request, f)
        out = Findings(f.pro)
        pin = request.policy_pack_version
        if pin is not None or self._pinned_from is not None:
            self._check_pin(out, pin, policy)

        constraints = request.constraints or []
        g = parser.parse(constraints)
        if policy.requires:  # the pack's `require` rules: the caller can add, never omit
            g = parser.with_requirements(g, constraints, policy.requires_for(
                f.tools, f.buckets, f.environment_key, f.is_production))
        req = checks.requirements(f, g, policy)

        # The checks run in a fixed order. A check that has nothing to look at (no such
        # guardrail or requirement) writes nothing, so it is not called at all: the guards below
        # are the checks' own first lines, here to save a call per check on every decision.
        checks.check_constraints_valid(out, g)
        checks.check_side_effects(out, f, g, not constraints)  # constraints_empty
        if f.sensitive_tools:
            checks.check_sensitive_tools(out, f, g)
        binding = (Binding(*self.binding_of(request, digest),
                           policy.approval_rule(f.buckets).bound_to)
                   if req.approval or ctx.approval_id is not None else None)
        check_approval(  # positional: keyword arguments cost a microsecond here
            out, policy, req.approval, req.verified_only, req.approval_sources,
            ctx.approval_status, ctx.approval_id, ctx.approved_at, at, tenant, digest,
            self.approvals, f.buckets, binding, requester,
        )
        if g.roles is not None:
            checks.check_role(out, f, g)
        checks.check_environment(out, f, g, req, policy)
        if g.windows:
            checks.check_change_windows(out, f, g, policy)
        if policy.freezes:
            checks.check_freezes(out, f, policy)
        if req.rollback:
            checks.check_rollback(out, f, req, policy, self.evidence)
        if req.mfa:
            checks.check_mfa(out, f, req, policy)
        if req.ticket:
            checks.check_ticket(out, f, req, policy, self.evidence)
        if g.max_records is not None:
            checks.check_records(out, f, g)
        if g.scopes:
            checks.check_resource_scope(out, f, g)
        if g.mcp_servers is not None:
            checks.check_mcp_servers(out, f, g)
        cost_estimate = check_loops(out, f, g, self.run_state)
        checks.check_task_clarity(out, f, self._goal_problems(request.goal, policy))
        if policy.rules:
            check_custom_rules(out, f, policy, constraints)
        report_break_glass(out)
        checks.report_caller_evidence(out, g)

        return respond(
            out, f, policy, rid, now, at, input_sha256, digest, g.recognized, cost_estimate,
            self._version,
        )

    def _check_pin(self, out: Findings, pin: str | None, policy: CompiledPolicy) -> None:
        """``policy_pack_version`` that this (active) pack does not answer to."""
        if self._pinned_from is not None:
            out.add(
                "POLICY_PIN_TIGHTENED",
                f"The request pins `{self._pinned_from}`; the active `{policy.policy_version}` "
                "is stricter for this action and decides it",
            )
        elif pin is not None and pin.strip() not in (policy.policy_version, policy.version):
            held = self._packs.versions if self._packs is not None else [policy.policy_version]
            ambiguous = self._packs is not None and len(self._packs.matches(pin)) > 1
            out.add(
                "POLICY_VERSION_UNKNOWN",
                (f"Policy version `{pin.strip()}` is ambiguous (several packs have it); pin "
                 "`name@version`. This server has " if ambiguous else
                 f"Policy version `{pin}` is not available; this server has ")
                + ", ".join(f"`{v}`" for v in held),
            )

    def _failed(
        self,
        request: CheckRequest,
        rid: str,
        now: datetime,
        at: datetime,
        input_sha256: str,
        code: str,
        message: str | None,
    ) -> Decision:
        issue = CODES[code].issue(message)
        return Decision(failed(request, self.policy, rid, now, at, input_sha256, issue))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _digest_of(request: CheckRequest, f: Facts) -> str:
    """The action digest: what an approval and an execution token are bound to."""
    ctx, c = f.context, f.classification
    return sorted_action_digest(
        c.sorted_tools, c.sorted_side_effects, request.arguments, f.environment,
        ctx.resource_scope, ctx.target_resources,
    )


def _mapping_sha256(body: dict[str, Any]) -> str:
    """SHA-256 of a mapping's RFC 8785 form; for a mapping outside RFC 8785's number domain
    (only possible in fields the engine does not read), of its sorted-key orjson form."""
    try:
        return sha256_hex(canonical_json(body))
    except (ValueError, TypeError):
        return sha256_hex(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
