"""What a running server holds — store, policy, pipeline, clock, reloader, deliverer — as one
typed :class:`AppState`, started and stopped by :func:`start` / :meth:`AppState.close`, and
read by the routes through the :func:`app_state` dependency."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from starlette.applications import Starlette

from stage0.contract.request import parse_instant
from stage0.engine import system_clock
from stage0.engine.evaluate import uuid4_id
from stage0.export import start_from_env
from stage0.policy import CompiledPolicy, PolicyError, load_policy
from stage0.policy.packset import PackSet, load_pack_set
from stage0.server import metrics
from stage0.server.backoff import AuthBackoff, BackoffSettings
from stage0.server.evidence import EvidencePrefetch, EvidenceSettings
from stage0.server.handlers import sweep
from stage0.server.reload import FleetSettings, PolicyReloader, PolicyUnavailable, StorePolicy
from stage0.server.writer import Writer
from stage0.store import Store
from stage0.store.checkpoints import Checkpointer, CheckpointSettings
from stage0.store.export import Exporter
from stage0.store.retention import PartitionMaintainer
from stage0.store.signing import ensure_signing_key
from stage0.store.webhooks import Deliverer

log = logging.getLogger("stage0.server")
GC_THRESHOLD = int(os.environ.get("STAGE0_GC_THRESHOLD", "20000"))
SWEEP_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class Settings:
    db: str | None = None
    policy: str | None = None
    frozen_time: str | None = None
    environment: str = "self-hosted"
    tune_gc: bool = False
    """Freeze start-up objects and collect less often (the served process; not tests)."""
    public_url: str | None = None
    """The base URL people reach this server at (``STAGE0_PUBLIC_URL``): approval links are
    absolute under it, else paths (the Host header is never trusted for them)."""
    auth_backoff: BackoffSettings = field(default_factory=BackoffSettings)
    """When failed authentications back off (``server/backoff.py``)."""
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)
    """When the decision log's chains are checkpointed (``store/checkpoints.py``)."""
    evidence: EvidenceSettings = field(default_factory=EvidenceSettings)
    """The evidence source that confirms rollback and ticket references (``server/evidence.py``)."""
    fleet: FleetSettings = field(default_factory=FleetSettings)
    """How this replica follows the store's active policy (``server/reload.py``, #16)."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            db=os.environ.get("STAGE0_DATABASE_URL"),
            policy=os.environ.get("STAGE0_POLICY") or None,
            frozen_time=os.environ.get("STAGE0_FROZEN_TIME") or None,
            environment=os.environ.get("STAGE0_ENVIRONMENT", "self-hosted"),
            tune_gc=True,
            public_url=public_url(os.environ.get("STAGE0_PUBLIC_URL")),
            auth_backoff=BackoffSettings.from_env(),
            checkpoints=CheckpointSettings.from_env(),
            evidence=EvidenceSettings.from_env(),
            fleet=FleetSettings.from_env(),
        )


def public_url(value: str | None) -> str | None:
    """``STAGE0_PUBLIC_URL`` checked: an absolute http(s) URL without query or fragment."""
    if not value:
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"STAGE0_PUBLIC_URL must be an absolute http(s) URL such as "
                         f"https://stage0.example.com, not {value!r}")
    return value.strip().rstrip("/")


@dataclass(slots=True, eq=False)
class AppState:
    """One server process's state, built once at start-up. Frozen in use except ``policy`` and
    ``packs``, which a hot reload replaces (:meth:`apply`); everything else is set once."""

    settings: Settings
    store: Store
    pipeline: Writer
    clock: Callable[[], datetime]
    deliverer: Deliverer
    policy: CompiledPolicy | None = None
    packs: PackSet | None = None
    reloader: PolicyReloader | None = None
    auth: AuthBackoff = field(default_factory=AuthBackoff)
    """Failed authentications of this process, and their back-off."""
    evidence: EvidencePrefetch | None = None
    """Looks a check's rollback and ticket references up before it is queued."""
    fleet: StorePolicy | None = None
    """The store's active policy, this replica's heartbeat and the others' (#16)."""
    exporter: Exporter | None = None
    """Exports the decision log to the sinks of ``STAGE0_EXPORT_CONFIG`` (``store/export.py``)."""

    def now_us(self) -> int:
        return int(self.clock().timestamp() * 1e6)

    def apply(self, new_set: PackSet) -> None:
        """Serve ``new_set`` (a reloaded pack file) from the pipeline's next batch on."""
        old, new = self.policy, new_set.active
        self.pipeline.swap_policy(new, new_set.held)
        self.policy, self.packs = new, new_set
        if old is not None:
            metrics.POLICY_INFO.labels(policy_version=old.policy_version,
                                       sha256=old.sha256).set(0)
        metrics.POLICY_INFO.labels(policy_version=new.policy_version, sha256=new.sha256).set(1)

    def close(self) -> None:
        if self.reloader is not None:
            self.reloader.close()
        if self.fleet is not None:
            self.fleet.close()
        if self.exporter is not None:
            self.exporter.close()
        self.deliverer.close()
        self.pipeline.close()
        self.store.dispose()


class _Sweeper:
    """Expires approvals every 30 s, called from the webhook delivery thread's ticks."""

    def __init__(self, pipeline: Writer) -> None:
        self.pipeline, self.last = pipeline, 0.0

    def __call__(self) -> None:
        if time.monotonic() - self.last >= SWEEP_EVERY_S:
            self.last = time.monotonic()
            self.pipeline.sweep().result(timeout=60)


def _each(*jobs: Callable[[], None]) -> Callable[[], None]:
    def tick() -> None:
        for job in jobs:
            job()

    return tick


def _load_packs(settings: Settings) -> PackSet | None:
    try:
        return load_pack_set(settings.policy) if settings.policy else PackSet(load_policy(None))
    except PolicyError as exc:
        log.error("%s; every /check fails closed until a valid pack is loaded", exc)
        return None


def _clock(settings: Settings) -> Callable[[], datetime]:
    if not settings.frozen_time:
        return system_clock
    frozen = parse_instant(settings.frozen_time)
    log.warning("evaluation clock frozen at %s (recorded on every decision)",
                settings.frozen_time)
    return lambda: frozen


def start(settings: Settings) -> AppState:
    """Open the store (migrated, with a signing key), load the pack, start the pipeline, the
    policy reloader (with a pack file) and the webhook deliverer."""
    sweep.warning_s()  # a bad STAGE0_APPROVAL_EXPIRY_WARNING_S stops the start, not the sweep
    store = Store(settings.db)
    store.migrate()
    ensure_signing_key(store)
    fleet = StorePolicy(store, settings.fleet, clock=time.time)
    try:
        packs = fleet.initial()
    except PolicyUnavailable:
        packs = None  # logged; every /check fails closed until a pack that loads is active
    if fleet.active is None:
        packs = _load_packs(settings)
    elif settings.policy:
        log.warning("--policy %s is not loaded: %s", settings.policy, fleet.ignored())
    policy = packs.active if packs is not None else None
    clock = _clock(settings)
    # the entry point's clocks and id factory: ``clock`` decides (frozen with --frozen-time),
    # ``wall_clock`` is the real time (TOTP steps, lockouts, webhook schedules), ``ids`` mints
    # request ids
    pipeline = Writer(store, policy, clock=clock, frozen_time=settings.frozen_time,
                      held=packs.held if packs is not None else (), ids=uuid4_id,
                      wall_clock=system_clock)
    pipeline.approvals.public_url = settings.public_url
    pipeline.fleet = fleet
    if policy is not None:
        metrics.POLICY_INFO.labels(policy_version=policy.policy_version,
                                   sha256=policy.sha256).set(1)
    state = AppState(settings=settings, store=store, pipeline=pipeline, clock=clock,
                     deliverer=Deliverer(store, clock=time.time, on_tick=_each(
                         Checkpointer(store, settings.checkpoints, clock=time.time,
                                      keyring=pipeline.keyring), _Sweeper(pipeline),
                         PartitionMaintainer(store))),
                     policy=policy, packs=packs, auth=AuthBackoff(settings.auth_backoff))
    state.evidence = EvidencePrefetch(settings.evidence, store, pipeline)
    state.fleet = fleet
    fleet.bind(state.apply, lambda: state.policy)
    fleet.tick()  # the first heartbeat, before serving
    fleet.start()
    if settings.policy:
        state.reloader = PolicyReloader(settings.policy, state.apply, clock=time.time,
                                        ignored=fleet.ignored)
        state.reloader.start()
    state.deliverer.start()
    state.exporter = start_from_env(store)
    # What was built so far (pack, engine caches, modules) lives as long as the server: move
    # it out of the collector's sight, and collect the young generation less often (a decision
    # allocates many short-lived objects; cycles among them are rare).
    if settings.tune_gc:
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 20)
    return state


def state_of(app: Starlette | object) -> AppState:
    """The started app's :class:`AppState` (tests and tools: ``state_of(client.app).pipeline``;
    a ``TestClient``'s ``app`` is typed as any ASGI app, hence ``object``)."""
    state: Any = getattr(getattr(app, "state", None), "stage0", None)
    if not isinstance(state, AppState):
        raise RuntimeError("the app has not started (its lifespan has not run)")
    return state


def app_state(request: Request) -> AppState:
    """The FastAPI dependency: the state of the app that answers ``request``."""
    return state_of(request.app)


State = Annotated[AppState, Depends(app_state)]
"""A route parameter ``state: State`` receives the app's :class:`AppState`."""
