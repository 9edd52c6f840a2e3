"""The evidence source of a served deployment: its settings, and the lookup ``/check`` makes
before it queues a request (:mod:`stage0.engine.evidence` has the lookup and the cache the engine
reads). Only requests whose key is valid, under a pack that verifies rollback plans or tickets,
and with a reference to check, cause a lookup."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from stage0.engine.evidence import EvidenceCache, HttpEvidenceSource, references
from stage0.server.jobs import Job
from stage0.store.keys import hash_key, lookup_key

if TYPE_CHECKING:
    from stage0.policy.packset import PackSet
    from stage0.server.writer import Writer
    from stage0.store import Store

log = logging.getLogger("stage0.evidence")


@dataclass(frozen=True, slots=True)
class EvidenceSettings:
    url: str | None = None
    """URL template with ``{ref}`` (and optionally ``{kind}``, ``{tenant}``); unset: no source,
    so a pack that verifies references defers them (``EVIDENCE_UNAVAILABLE``)."""
    timeout_s: float = 2.0
    auth: str | None = None
    """The value of the ``auth_header`` sent with every lookup (a secret: from the environment)."""
    auth_header: str = "Authorization"
    ttl_s: float = 60.0
    """How long a confirmation counts before the reference is looked up again."""

    @classmethod
    def from_env(cls) -> EvidenceSettings:
        return cls(
            url=os.environ.get("STAGE0_EVIDENCE_URL") or None,
            timeout_s=float(os.environ.get("STAGE0_EVIDENCE_TIMEOUT_S", "2")),
            auth=os.environ.get("STAGE0_EVIDENCE_AUTH") or None,
            auth_header=os.environ.get("STAGE0_EVIDENCE_AUTH_HEADER") or "Authorization",
            ttl_s=float(os.environ.get("STAGE0_EVIDENCE_TTL_S", "60")),
        )


class EvidencePrefetch:
    """Looks up a ``/check``'s references before the writer decides it."""

    def __init__(self, settings: EvidenceSettings, store: Store, writer: Writer) -> None:
        cache: EvidenceCache = writer.evidence
        cache.ttl_s = settings.ttl_s
        headers = {settings.auth_header: settings.auth} if settings.auth else {}
        self.store = store
        self.writer = writer
        self.source = (HttpEvidenceSource(settings.url, cache, timeout_s=settings.timeout_s,
                                          headers=headers) if settings.url else None)

    async def before(self, packs: PackSet | None, job: Job) -> None:
        """Look ``job``'s references up (never raises: no answer is no evidence)."""
        if self.source is None or packs is None or job.request is None:
            return
        try:
            refs = references(job.request, (packs.active, *packs.held))
            if not refs:
                return
            tenant = await self._tenant(job)
            if tenant is not None:
                await self.source.prefetch(tenant, refs)
        except Exception:  # the engine finds no answer and fails closed
            log.warning("evidence lookup for %s failed", job.request_id, exc_info=True)

    async def _tenant(self, job: Job) -> str | None:
        """The tenant of the job's key: known to the writer, else looked up (``None``: no such
        key, and the writer will answer 401)."""
        if job.key_id is not None or not job.secret:
            return None
        if job.secret_hash is None:
            job.secret_hash = hash_key(job.secret)
        known = self.writer.known.get(job.secret_hash)
        if known is not None:
            return known[0]
        key = await run_in_threadpool(lookup_key, self.store, job.secret)
        return key.tenant_id if key is not None else None

    async def aclose(self) -> None:
        if self.source is not None:
            await self.source.aclose()
