"""Back-off for failed authentication: an API key that is unknown or revoked, on ``/check``, on
every routed endpoint and at the console's sign-in.

Two things are counted, each on its own: the *source* (the client address, as uvicorn reports
it: behind a proxy listed in ``FORWARDED_ALLOW_IPS``, the address it forwards) and the *key*
(the first 10 characters of the secret that was sent, which for a real key is its public
prefix). After ``after`` failures of one of them (``key_after`` for a key), with no pause longer
than ``window_s`` between them, it is refused for ``base_s`` seconds with a 429 ``AUTH_BACKOFF``
and ``Retry-After``; every failure after that doubles the pause, up to ``max_s``. A refused
request is not looked up, so it is neither a failure nor a success. A source or key is
forgotten once it has been quiet for ``window_s`` after its last pause.

A success never clears a counter (an attacker holding one valid key could otherwise reset its
own). Instead, a key that has succeeded from a source is remembered for that source (its
SHA-256, for ``GOOD_TTL_S``) and passes the back-off there: the services that already use
their key from an address are not locked out by a guesser at the same address, nor by one
hammering their key's prefix from elsewhere; a new key, or a known key from a new address,
waits until the back-off ends (at most ``max_s`` after the last failure). The back-off only
ever refuses: a request that passes it is authenticated as any other, so a wrong key is a 401
at best, never an answer.

The state is in memory, per process: with ``--workers N`` (or N replicas) each process counts
its own failures, so a guesser gets up to N times the allowance before every process backs
off. It is bounded (``MAX_TRACKED`` sources and keys, the oldest quiet ones dropped first, and
``MAX_GOOD`` remembered keys).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from stage0.server import metrics
from stage0.store.keys import hash_key

AFTER_ENV = "STAGE0_AUTH_BACKOFF_AFTER"
KEY_AFTER_ENV = "STAGE0_AUTH_BACKOFF_KEY_AFTER"
WINDOW_ENV = "STAGE0_AUTH_BACKOFF_WINDOW_S"
BASE_ENV = "STAGE0_AUTH_BACKOFF_BASE_S"
MAX_ENV = "STAGE0_AUTH_BACKOFF_MAX_S"
MAX_TRACKED = 50_000
"""Sources and keys with failures kept at most."""
MAX_GOOD = 20_000
"""(source, key) pairs that succeeded, remembered at most."""
GOOD_TTL_S = 24 * 3600.0
"""How long a key that succeeded from a source passes that source's back-off."""
PREFIX_CHARS = 10
"""The characters of a secret that name its key (``ApiKey.prefix``)."""
DETAIL = ("Too many failed authentications from this address or for this key; try again "
          "after retry_after_seconds")


@dataclass(frozen=True, slots=True)
class BackoffSettings:
    after: int = 10
    """Failures of one source before it backs off (0: sources never back off)."""
    key_after: int = 30
    """Failures for one key prefix, from any source, before that key backs off (0: never)."""
    window_s: float = 600.0
    """A failure counts with the next one if it comes within this many seconds."""
    base_s: float = 1.0
    """The first pause; it doubles with each further failure."""
    max_s: float = 300.0
    """The longest pause."""

    @classmethod
    def from_env(cls) -> BackoffSettings:
        d = cls()
        settings = cls(
            after=int(os.environ.get(AFTER_ENV) or d.after),
            key_after=int(os.environ.get(KEY_AFTER_ENV) or d.key_after),
            window_s=float(os.environ.get(WINDOW_ENV) or d.window_s),
            base_s=float(os.environ.get(BASE_ENV) or d.base_s),
            max_s=float(os.environ.get(MAX_ENV) or d.max_s),
        )
        if min(settings.after, settings.key_after) < 0:
            raise ValueError(f"{AFTER_ENV} and {KEY_AFTER_ENV} must not be negative")
        if not (settings.window_s > 0 and 0 < settings.base_s <= settings.max_s):
            raise ValueError(f"{WINDOW_ENV} must be positive and {BASE_ENV} positive and at "
                             f"most {MAX_ENV}")
        return settings


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    until: float = 0.0


class AuthBackoff:
    """One process's failed authentications (call it from the event loop only)."""

    def __init__(self, settings: BackoffSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or BackoffSettings()
        self.clock = clock
        self._failures: dict[tuple[str, str], _Failures] = {}
        self._blocked: dict[tuple[str, str], float] = {}
        self._good: dict[tuple[str, str], float] = {}

    @staticmethod
    def _ids(source: str, secret: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("source", source), ("key", secret[:PREFIX_CHARS])

    def retry_after(self, source: str, secret: str) -> int | None:
        """Seconds until ``secret`` may be tried from ``source`` again; ``None``: now."""
        if not self._blocked:  # the normal case: nothing is backing off
            return None
        now = self.clock()
        wait, scope = 0.0, ""
        for ident in self._ids(source, secret):
            until = self._blocked.get(ident)
            if until is None:
                continue
            if until <= now:
                del self._blocked[ident]
            elif until - now > wait:
                wait, scope = until - now, ident[0]
        if not wait:
            return None
        seen = self._good.get((source, hash_key(secret)))
        if seen is not None and now - seen < GOOD_TTL_S:
            return None
        metrics.AUTH_BACKOFF.labels(scope=scope).inc()
        return max(1, math.ceil(wait))

    def failed(self, source: str, secret: str, surface: str) -> None:
        """``secret`` (unknown or revoked) was sent from ``source``, on ``surface`` (``api`` or
        ``console``)."""
        metrics.AUTH_FAILURES.labels(surface=surface).inc()
        s = self.settings
        now = self.clock()
        source_id, key_id = self._ids(source, secret)
        self._fail(source_id, s.after, now)
        self._fail(key_id, s.key_after, now)

    def _fail(self, ident: tuple[str, str], after: int, now: float) -> None:
        if after <= 0:
            return
        s, failures = self.settings, self._failures
        entry = failures.pop(ident, None)  # re-inserted last: the oldest quiet ones go first
        if entry is None or now - max(entry.last, entry.until) > s.window_s:
            entry = _Failures(0, now)
        entry.count += 1
        entry.last = now
        if entry.count >= after:
            entry.until = now + min(s.max_s, s.base_s * 2.0 ** min(entry.count - after, 64))
            self._blocked[ident] = entry.until
        failures[ident] = entry
        if len(failures) > MAX_TRACKED:
            oldest = next(iter(failures))
            del failures[oldest]
            self._blocked.pop(oldest, None)

    def succeeded(self, source: str, secret_hash: str) -> None:
        """The key of ``secret_hash`` authenticated from ``source``: it passes the back-off
        there from now on (for ``GOOD_TTL_S``)."""
        good = self._good
        ident = (source, secret_hash)
        if good.pop(ident, None) is None and len(good) >= MAX_GOOD:
            del good[next(iter(good))]
        good[ident] = self.clock()
