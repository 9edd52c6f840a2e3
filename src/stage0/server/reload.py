"""Hot reload of the policy pack: on SIGHUP and when the file changes.

A new pack is loaded and validated first; if it fails, it is refused and the last good pack keeps
serving (``/readyz`` and ``/metrics`` say so). A good pack is handed to the decision pipeline,
which switches between two batches, so no decision mixes two packs and none fails for the
reload. Every decision names the pack version that made it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stage0.policy import PolicyError
from stage0.policy.packset import load_pack_set, pack_files
from stage0.server import metrics

log = logging.getLogger("stage0.reload")


class PolicyReloader:
    """Polls the pack's modification time every ``interval_s`` and reloads on SIGHUP."""

    def __init__(self, source: str | Path, apply: Any, *, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock``: the real time in seconds (``reloaded_at`` in the status)."""
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
