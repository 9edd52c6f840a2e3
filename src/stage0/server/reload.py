"""Where the served policy comes from: a pack file (hot reload), or the store (a fleet).

:class:`PolicyReloader`: hot reload of a pack file, on SIGHUP and when the file changes. A new
pack is loaded and validated first; if it fails, it is refused and the last good pack keeps
serving (``/readyz`` and ``/metrics`` say so). A good pack is handed to the decision pipeline,
which switches between two batches, so no decision mixes two packs and none fails for the
reload. Every decision names the pack version that made it.

:class:`StorePolicy`: the pack ``stage0 policy push`` made active in the store
(:mod:`stage0.store.policies`), served by every replica on that store. Each decision batch
confirms, under the shared policy lock and right before its commit, that it was decided under
the active pack (:meth:`StorePolicy.confirm`); if not, it is rolled back and decided again under
the active pack, or failed closed (503) when that pack does not load here. A poller loads a new
active pack ahead of the batches, records this replica's heartbeat and reads the others'
(drift: ``/readyz``, ``/metrics``, the console). When the store has an active pack it wins over
``--policy``: the file is not loaded, and a reload of it is ignored.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stage0.policy import CompiledPolicy, PolicyError
from stage0.policy.loader import compile_text
from stage0.policy.packset import PackSet, load_pack_set, pack_files
from stage0.server import metrics
from stage0.server.jobs import Job, Outcome, fail_closed_body
from stage0.store import policies
from stage0.store.database import Store
from stage0.store.policies import ActivePolicy, Replica

if TYPE_CHECKING:
    from stage0.server.writer import Writer

log = logging.getLogger("stage0.reload")


class PolicyReloader:
    """Polls the pack's modification time every ``interval_s`` and reloads on SIGHUP."""

    def __init__(self, source: str | Path, apply: Any, *, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.time,
                 ignored: Callable[[], str | None] = lambda: None) -> None:
        """``clock``: the real time in seconds (``reloaded_at`` in the status); ``ignored``:
        why the file is not to be served now (the store's policy is active), or ``None``."""
        self._ignored = ignored
        self._source = Path(source)
        self._clock = clock
        self._apply = apply
        self._interval = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stamp = self._mtime()
        self.status: dict[str, Any] = {"ok": True, "error": None, "reloaded_at": None,
                                       "policy_version": None}
        self._thread = threading.Thread(target=self._run, name="stage0-reload", daemon=True)

    def _mtime(self) -> tuple[tuple[str, float], ...] | None:
        try:
            return tuple((str(p), p.stat().st_mtime) for p in pack_files(self._source))
        except OSError:
            return None

    def start(self) -> None:
        self._thread.start()
        try:
            signal.signal(signal.SIGHUP, lambda *_: self._wake.set())
        except ValueError:  # not the main thread (e.g. under a test client): polling only
            log.debug("SIGHUP handler not installed (not the main thread)")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def reload(self) -> bool:
        """Load and validate the pack now; apply it if good. Returns whether it was applied."""
        ignored = self._ignored()
        if ignored is not None:
            self.status = {**self.status, "ok": True, "error": None, "ignored": ignored,
                           "reloaded_at": self._clock()}
            metrics.POLICY_RELOADS.labels(result="ignored").inc()
            log.warning("the pack file was not reloaded: %s", ignored)
            return False
        try:
            packs = load_pack_set(self._source)
        except Exception as exc:  # noqa: BLE001 - any failure refuses the set, never the thread
            error = str(exc) if isinstance(exc, PolicyError) else (
                f"{self._source}: the pack set could not be loaded: {type(exc).__name__}: {exc}")
            self.status = {**self.status, "ok": False, "error": error,
                           "reloaded_at": self._clock()}
            metrics.POLICY_RELOADS.labels(result="refused").inc()
            log.error("refused the new policy pack, still serving the last good one: %s", error)
            return False
        self._apply(packs)
        self.status = {"ok": True, "error": None, "reloaded_at": self._clock(),
                       "policy_version": packs.active.policy_version,
                       "held_versions": packs.held_versions}
        metrics.POLICY_RELOADS.labels(result="applied").inc()
        log.warning("policy reloaded: now serving %s (also held for pins: %s)",
                    packs.active.policy_version,
                    ", ".join(p.policy_version for p in packs.held) or "none")
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self._interval)
            if self._stop.is_set():
                return
            self._wake.clear()
            stamp = self._mtime()
            if woken or (stamp is not None and stamp != self._stamp):
                self._stamp = stamp
                self.reload()


# -- the store's policy: a fleet -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """How a replica follows the store's active policy (``STAGE0_POLICY_POLL_S`` …)."""

    poll_s: float = 1.0
    """How often the poller reads the active pack and records the heartbeat; ``0``: never
    (the decision batches still confirm the active pack before each commit)."""
    drift_grace_s: float = 10.0
    """How long this replica may serve another pack than the active one before ``/readyz``
    says not ready."""
    replica_ttl_s: float = 30.0
    """A replica whose heartbeat is older than this is gone (not shown, not counted)."""
    replica_id: str | None = None
    """This replica's name in the heartbeats, before ``:pid`` (default: the host name)."""

    @classmethod
    def from_env(cls) -> FleetSettings:
        env = os.environ
        return cls(poll_s=float(env.get("STAGE0_POLICY_POLL_S", "1")),
                   drift_grace_s=float(env.get("STAGE0_POLICY_DRIFT_GRACE_S", "10")),
                   replica_ttl_s=float(env.get("STAGE0_POLICY_REPLICA_TTL_S", "30")),
                   replica_id=env.get("STAGE0_REPLICA_ID") or None)


class PolicyUnavailable(Exception):
    """The store's active pack cannot be served by this replica (it does not load here)."""


class PolicyChanged(Exception):
    """Raised in a decision batch's transaction: the active pack is not the one the batch was
    decided under (:meth:`StorePolicy.confirm`)."""

    def __init__(self, generation: int, sha256: str) -> None:
        self.generation, self.sha256 = generation, sha256
        super().__init__(f"the active policy is generation {generation}")


PACKS_KEPT = 4
REDO_LIMIT = 3


class StorePolicy:
    """This replica's view of the store's active pack (see the module's description).

    ``apply`` serves a pack set from the pipeline's next batch on (``AppState.apply``);
    ``serving`` returns the pack this replica serves (``AppState.policy``). Both are bound with
    :meth:`bind` once the state exists."""

    def __init__(self, store: Store, settings: FleetSettings | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings or FleetSettings()
        self._clock = clock
        self.replica_id = f"{self.settings.replica_id or socket.gethostname()}:{os.getpid()}"
        self.started_us = int(clock() * 1e6)
        self.active: ActivePolicy | None = None
        """The active pack as last read (``None``: nothing was ever pushed; files serve)."""
        self.replicas: list[Replica] = []
        """The live replicas, as the last heartbeat read them."""
        self.failed: dict[int, str] = {}
        """Generations that do not load here, and why (stored packs do not change)."""
        self.store_error: str | None = None
        self.switches = 0
        """Times a batch found another pack active and was decided again."""
        self._packs: dict[int, CompiledPolicy] = {}
        self._drift_since: float | None = None
        self._apply: Callable[[PackSet], None] = lambda _: None
        self._serving: Callable[[], CompiledPolicy | None] = lambda: None
        self._switch = threading.Lock()
        self._depth = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stage0-policy", daemon=True)

    def bind(self, apply: Callable[[PackSet], None],
             serving: Callable[[], CompiledPolicy | None]) -> None:
        self._apply, self._serving = apply, serving

    # -- loading ------------------------------------------------------------------------------

    def initial(self) -> PackSet | None:
        """At start: the store's active pack as a set, or ``None`` when nothing was pushed
        (the pack file or the built-in pack serves). Raises :class:`PolicyUnavailable`."""
        self.active = policies.active_policy(self.store)
        if self.active is None:
            return None
        return PackSet(self.load(self.active.generation))

    def load(self, generation: int) -> CompiledPolicy:
        """The stored pack of ``generation``, compiled (kept for the next time)."""
        if generation in self._packs:
            return self._packs[generation]
        if generation in self.failed:
            raise PolicyUnavailable(self.failed[generation])
        found = policies.pack_text(self.store, generation)
        if found is None:
            raise PolicyUnavailable(f"policy generation {generation} is not in the store")
        version, text = found
        try:
            compiled = compile_text(text, source=f"<store generation {generation}>")
            if compiled.sha256 != version.sha256:
                raise PolicyError(version.policy_version, [
                    f"its content hash here is {compiled.sha256[:12]}…, not the pushed "
                    f"{version.sha256[:12]}…"])
        except Exception as exc:  # noqa: BLE001 - whatever the reason, it does not load here
            detail = "; ".join(exc.problems) if isinstance(exc, PolicyError) else (
                f"{type(exc).__name__}: {exc}")
            why = (f"the active policy {version.policy_version} (generation {generation}) "
                   f"does not load on this replica: {detail[:500]}")
            self.failed[generation] = why
            metrics.POLICY_RELOADS.labels(result="refused").inc()
            log.error("%s; every /check fails closed until a pack that loads is active", why)
            raise PolicyUnavailable(why) from None
        for old in sorted(self._packs)[:-PACKS_KEPT + 1]:
            del self._packs[old]
        self._packs[generation] = compiled
        return compiled

    def _serve(self, policy: CompiledPolicy, generation: int) -> None:
        self._apply(PackSet(policy))
        metrics.POLICY_RELOADS.labels(result="applied").inc()
        log.warning("policy from the store: now serving %s (generation %d)",
                    policy.policy_version, generation)

    # -- the decision writer's side (its thread, inside a batch's transaction) ----------------

    def confirm(self, writer: Writer, conn: Any) -> None:
        """Read the active pack under the shared policy lock (held until the commit); raise
        :class:`PolicyChanged` if the batch was decided under another one."""
        with writer.pipeline(conn):
            cursors = policies.send_active_read(conn, writer.store.dialect)
        found = policies.fetch_active(cursors)
        if found is None:
            return  # nothing was ever pushed: the pack file (or the built-in pack) serves
        policy = writer.policy
        if policy is None or policy.sha256 != found[1]:
            raise PolicyChanged(*found)

    def redo(self, writer: Writer, batch: list[Job], changed: PolicyChanged) -> list[Outcome]:
        """After :class:`PolicyChanged` (the transaction rolled back): switch to the active
        pack and decide ``batch`` again, or fail it closed when that pack does not load."""
        try:
            if self._depth >= REDO_LIMIT:
                raise PolicyUnavailable("the active policy kept changing while this batch "
                                        "was decided")
            policy = self.load(changed.generation)
        except PolicyUnavailable as exc:
            self._refresh()
            metrics.FAIL_CLOSED.labels(reason="policy").inc(len(batch))
            # named after the pack that should have decided (none did)
            version = self.active.policy_version if self.active else writer.policy_version
            return [Outcome(503, fail_closed_body(job.request_id, f"{exc}; failing closed",
                                                  version), {"retry-after": "1"})
                    for job in batch]
        with self._switch:
            self._serve(policy, changed.generation)
            writer._apply_pending_policy()
        self.switches += 1
        self._refresh()
        for job in batch:
            job.early = None  # decided under the previous pack: decided again
        self._depth += 1
        try:
            return writer.process(batch)
        finally:
            self._depth -= 1

    def _refresh(self) -> None:
        """Read the active pack's row again (a batch found it changed)."""
        try:
            self.active = policies.active_policy(self.store)
        except Exception:
            log.debug("could not read the active policy", exc_info=True)

    # -- the poller --------------------------------------------------------------------------

    def start(self) -> None:
        if self.settings.poll_s > 0:
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            policies.forget(self.store, self.replica_id)
        except Exception:
            log.debug("could not remove this replica's heartbeat", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.poll_s):
            self.tick()

    def tick(self) -> None:
        """Read the active pack (load and serve it if it is new), record the heartbeat, read
        the other replicas' (the poller calls it every ``poll_s``; tests call it directly)."""
        now = self._clock()
        try:
            active = self.active = policies.active_policy(self.store)
            serving = self._serving()
            if (active is not None and active.generation not in self.failed
                    and (serving is None or serving.sha256 != active.sha256)):
                try:
                    policy = self.load(active.generation)
                    with self._switch:
                        self._serve(policy, active.generation)
                except PolicyUnavailable:
                    pass  # recorded in ``failed``; the batches fail closed
            now_us = int(now * 1e6)
            ttl_us = int(self.settings.replica_ttl_s * 1e6)
            policies.heartbeat(self.store, self.heartbeat(now),
                               forget_before_us=now_us - 20 * ttl_us)
            self.replicas = policies.replicas(self.store, seen_since_us=now_us - ttl_us)
            self.store_error = None
        except Exception as exc:  # noqa: BLE001 - the store may be down: tried again
            self.store_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            log.warning("policy poll failed: %s", self.store_error)
        self.observe(now)

    # -- what this replica serves, and the others ----------------------------------------------

    def generation_of(self, policy: CompiledPolicy | None) -> int | None:
        """The store generation of ``policy`` (``None``: a pack file or the built-in one)."""
        if policy is None:
            return None
        active = self.active
        if active is not None and active.sha256 == policy.sha256:
            return active.generation
        for generation, pack in self._packs.items():
            if pack.sha256 == policy.sha256:
                return generation
        return None

    def state(self) -> str:
        active, serving = self.active, self._serving()
        if active is None:
            return "file"
        if active.generation in self.failed:
            return "failed"
        if serving is not None and serving.sha256 == active.sha256:
            return "serving"
        return "drifting"

    def heartbeat(self, now: float) -> Replica:
        serving, state = self._serving(), self.state()
        return Replica(self.replica_id, socket.gethostname(), os.getpid(),
                       self.generation_of(serving),
                       serving.policy_version if serving is not None else None,
                       serving.sha256 if serving is not None else None, state,
                       self.failed.get(self.active.generation) if self.active else None,
                       self.started_us, int(now * 1e6))

    def observe(self, now: float | None = None) -> None:
        """Update the drift clock and the metrics."""
        now = self._clock() if now is None else now
        state = self.state()
        if state in ("serving", "file"):
            self._drift_since = None
        elif self._drift_since is None:
            self._drift_since = now
        active = self.active
        metrics.POLICY_GENERATION.set(self.generation_of(self._serving()) or 0)
        metrics.POLICY_ACTIVE_GENERATION.set(active.generation if active else 0)
        metrics.POLICY_DRIFT.set(0 if state in ("serving", "file") else 1)
        metrics.POLICY_REPLICAS_DRIFTING.set(len(self.drifting()))

    def drifting(self) -> list[Replica]:
        """The live replicas that do not serve the active pack."""
        active = self.active
        if active is None:
            return []
        return [r for r in self.replicas if r.sha256 != active.sha256]

    def ignored(self) -> str | None:
        """Why a pack file is not served: the store's active pack wins."""
        active = self.active
        if active is None:
            return None
        return (f"the store's active policy {active.policy_version} (generation "
                f"{active.generation}) wins over the pack file")

    def problems(self) -> list[str]:
        """Why this replica is not ready, as far as the store's policy goes."""
        state, active = self.state(), self.active
        if active is None:
            return []
        if state == "failed":
            return [f"{self.failed[active.generation]}; every /check fails closed"]
        if state == "drifting" and self._drift_since is not None:
            late = self._clock() - self._drift_since
            if late > self.settings.drift_grace_s:
                serving = self._serving()
                return [f"this replica serves "
                        f"{serving.policy_version if serving else 'no policy'}, not the "
                        f"active {active.policy_version} (generation {active.generation}), "
                        f"for {late:.0f} s"]
        return []

    def status(self) -> dict[str, Any]:
        """``/readyz``'s ``fleet`` member (and the console's)."""
        self.observe()
        now_us = int(self._clock() * 1e6)
        active = self.active
        drifting = {r.replica_id for r in self.drifting()}
        serving = self._serving()
        return {
            "replica_id": self.replica_id,
            "state": self.state(),
            "generation": self.generation_of(serving),
            "active": None if active is None else {
                "generation": active.generation, "policy_version": active.policy_version,
                "sha256": active.sha256, "epoch": active.epoch,
                "activated_by": active.activated_by,
                "activated_at": active.activated_us / 1e6},
            "replicas": [{**r.to_dict(), "seen_s_ago": round((now_us - r.seen_us) / 1e6, 1),
                          "drifting": r.replica_id in drifting} for r in self.replicas],
            "drifting": sorted(drifting),
            "switches": self.switches,
            "store_error": self.store_error,
        }
