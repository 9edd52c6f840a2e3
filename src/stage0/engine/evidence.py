"""Evidence references the server checks: rollback plans and tickets confirmed by a configured
evidence source (an HTTP lookup), under a pack with ``evidence.rollback_plan: verified`` or
``evidence.ticket: verified``.

The lookup never runs inside an evaluation. The service looks the request's references up
*before* it queues the request (:meth:`HttpEvidenceSource.prefetch`, async, concurrent, with a
timeout) and leaves each answer in an :class:`EvidenceCache`; the engine only reads that cache
(:class:`EvidenceResolver`), so evaluation stays pure and fast. What the cache does not hold —
no source configured, a lookup that failed or timed out, an answer older than the cache's
lifetime — is not evidence: the requirement is not satisfied (fail closed).

The source's contract: ``GET`` the configured URL template with ``{kind}`` (``rollback_plan``
or ``ticket``), ``{ref}`` (the reference, URL-encoded) and ``{tenant}`` filled in. ``200`` with
a JSON object whose ``valid`` is ``true`` confirms the reference; ``200`` with anything else
(``{"valid": false, "reason": "…"}``) or ``404`` does not; any other status, a body that is
not JSON, a connection error or the timeout is *unavailable*.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import quote

import httpx

from stage0.contract.request import CheckRequest
from stage0.policy.compiled import CompiledPolicy

EvidenceKind = Literal["rollback_plan", "ticket"]
EvidenceState = Literal["valid", "invalid", "not_found", "unavailable"]

MAX_REFERENCE = 256
"""References longer than this are not looked up (and so never confirmed)."""


@dataclass(frozen=True, slots=True)
class EvidenceResult:
    """What the evidence source said about one reference, and when (monotonic seconds)."""

    state: EvidenceState
    detail: str = ""
    checked_at: float = 0.0

    @property
    def valid(self) -> bool:
        return self.state == "valid"


class EvidenceResolver(Protocol):
    """What the engine asks: the answer for ``(tenant, kind, ref)``, ``None`` when there is
    none (not looked up, or too old)."""

    def lookup(self, tenant: str, kind: EvidenceKind, ref: str) -> EvidenceResult | None: ...


class EvidenceCache:
    """Answers of the evidence source by ``(tenant, kind, ref)``, each good for ``ttl_s``.

    Written by the prefetch, read by the engine; a plain dictionary (single operations are
    atomic under the GIL), bounded to ``limit`` entries."""

    def __init__(self, ttl_s: float = 60.0, *, limit: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._limit = limit
        self._clock = clock
        self._answers: dict[tuple[str, str, str], EvidenceResult] = {}

    def put(self, tenant: str, kind: EvidenceKind, ref: str, result: EvidenceResult) -> None:
        if len(self._answers) >= self._limit:
            self._answers.clear()
        self._answers[(tenant, kind, ref)] = result

    def lookup(self, tenant: str, kind: EvidenceKind, ref: str) -> EvidenceResult | None:
        hit = self._answers.get((tenant, kind, ref))
        if hit is None or self._clock() - hit.checked_at > self.ttl_s:
            return None
        return hit

    def fresh_and_valid(self, tenant: str, kind: EvidenceKind, ref: str) -> bool:
        hit = self.lookup(tenant, kind, ref)
        return hit is not None and hit.valid


class StaticEvidence:
    """A fixed resolver (tests, policy suites): ``{(kind, ref): valid}`` for every tenant."""

    def __init__(self, answers: Mapping[tuple[str, str], bool]) -> None:
        self._answers = dict(answers)

    def lookup(self, tenant: str, kind: EvidenceKind, ref: str) -> EvidenceResult | None:
        valid = self._answers.get((kind, ref))
        if valid is None:
            return EvidenceResult("not_found", "not known to the evidence source")
        return EvidenceResult("valid" if valid else "invalid")


def reference(value: object) -> str | None:
    """A reference a caller sent (a non-empty string that is not a flag word), else ``None``."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or text.lower() in ("true", "false", "yes", "no", "none", "null"):
        return None
    return text


def references(request: CheckRequest, policies: Iterable[CompiledPolicy],
               ) -> list[tuple[EvidenceKind, str]]:
    """The references of ``request`` that one of ``policies`` wants confirmed."""
    ctx = request.context
    if ctx is None:
        return []
    rollback = ticket = False
    for p in policies:
        rollback = rollback or p.rollback_evidence == "verified"
        ticket = ticket or p.ticket_evidence == "verified"
    found: list[tuple[EvidenceKind, str]] = []
    plan = reference(ctx.rollback_plan) if rollback else None
    if plan is not None and len(plan) <= MAX_REFERENCE:
        found.append(("rollback_plan", plan))
    tid = reference(ctx.ticket_id) if ticket else None
    if tid is not None and len(tid) <= MAX_REFERENCE:
        found.append(("ticket", tid))
    return found


class HttpEvidenceSource:
    """Looks references up over HTTP (see the module's documentation) into ``cache``."""

    def __init__(self, url: str, cache: EvidenceCache, *, timeout_s: float = 2.0,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if "{ref}" not in url:
            raise ValueError("the evidence URL template must contain `{ref}`")
        self.url = url
        self.cache = cache
        self.timeout_s = timeout_s
        self._headers = dict(headers or {})
        self._transport = transport
        self._clock = clock
        self._client: httpx.AsyncClient | None = None

    def _url(self, tenant: str, kind: str, ref: str) -> str:
        return (self.url.replace("{kind}", quote(kind, safe=""))
                .replace("{tenant}", quote(tenant, safe=""))
                .replace("{ref}", quote(ref, safe="")))

    async def prefetch(self, tenant: str, refs: Iterable[tuple[EvidenceKind, str]]) -> None:
        """Look up every reference the cache does not hold as valid and fresh, at once; each
        answer (or failure) goes into the cache. Never raises."""
        todo = [(k, r) for k, r in dict.fromkeys(refs)
                if not self.cache.fresh_and_valid(tenant, k, r)]
        if not todo:
            return
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, headers=self._headers,
                                             follow_redirects=False)
        results = await asyncio.gather(*(self._one(tenant, k, r) for k, r in todo))
        for (kind, ref), result in zip(todo, results, strict=True):
            self.cache.put(tenant, kind, ref, result)

    async def _one(self, tenant: str, kind: EvidenceKind, ref: str) -> EvidenceResult:
        assert self._client is not None
        try:
            response = await asyncio.wait_for(
                self._client.get(self._url(tenant, kind, ref), timeout=self.timeout_s),
                self.timeout_s)
        except (TimeoutError, httpx.TimeoutException):
            return self._result("unavailable", f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return self._result("unavailable", f"{type(exc).__name__}")
        except Exception as exc:  # noqa: BLE001 - a lookup that fails is no evidence
            return self._result("unavailable", f"{type(exc).__name__}")
        if response.status_code == 404:
            return self._result("not_found", "not known to the evidence source")
        if response.status_code != 200:
            return self._result("unavailable", f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            return self._result("unavailable", "the answer is not JSON")
        if isinstance(body, dict) and body.get("valid") is True:
            return self._result("valid")
        reason = body.get("reason") if isinstance(body, dict) else None
        return self._result("invalid", str(reason)[:200] if reason else "not valid")

    def _result(self, state: EvidenceState, detail: str = "") -> EvidenceResult:
        return EvidenceResult(state, detail, self._clock())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
