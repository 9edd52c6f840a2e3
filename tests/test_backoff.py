"""``AuthBackoff`` on a hand-driven clock: when a source or a key backs off, for how long, what
passes it, what it forgets, and how much it keeps."""

from __future__ import annotations

from typing import Any

import pytest

from stage0.server import backoff as backoff_module
from stage0.server.backoff import AuthBackoff, BackoffSettings
from stage0.store.keys import hash_key

GOOD = "s0_good-key-of-the-service"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**settings: Any) -> tuple[AuthBackoff, Clock]:
    clock = Clock()
    return AuthBackoff(BackoffSettings(**settings), clock), clock


def fail(auth: AuthBackoff, source: str, n: int, secret: str = "s0_wrong") -> None:
    for i in range(n):
        auth.failed(source, f"{secret}{i}", "api")


def test_a_source_backs_off_after_its_allowance_exponentially_up_to_the_cap() -> None:
    auth, clock = make(after=3, key_after=0, base_s=1, max_s=8, window_s=60)
    fail(auth, "10.0.0.1", 2)
    assert auth.retry_after("10.0.0.1", "s0_next") is None
    waits = []
    for _ in range(6):
        fail(auth, "10.0.0.1", 1)
        wait = auth.retry_after("10.0.0.1", "s0_next")
        assert wait is not None
        waits.append(wait)
        clock.now += wait  # the pause ends: one more try
        assert auth.retry_after("10.0.0.1", "s0_next") is None
    assert waits == [1, 2, 4, 8, 8, 8]
    assert auth.retry_after("10.0.0.2", "s0_next") is None  # other sources are not held back


def test_a_success_resets_nothing_but_its_key_passes_there() -> None:
    auth, clock = make(after=3, key_after=0)
    auth.succeeded("10.0.0.1", hash_key(GOOD))
    fail(auth, "10.0.0.1", 3)
    auth.succeeded("10.0.0.1", hash_key(GOOD))  # the guesser's own valid key, say
    assert auth.retry_after("10.0.0.1", GOOD) is None
    assert auth.retry_after("10.0.0.1", "s0_another-valid-key") == 1
    assert auth.retry_after("10.0.0.9", GOOD) is None
    fail(auth, "10.0.0.9", 3)
    assert auth.retry_after("10.0.0.9", GOOD) == 1  # known at .1, not at .9
    clock.now += backoff_module.GOOD_TTL_S + 1
    fail(auth, "10.0.0.1", 3)
    assert auth.retry_after("10.0.0.1", GOOD) is not None  # remembered for a day only


def test_a_key_hammered_from_many_sources_backs_off_everywhere() -> None:
    auth, _ = make(after=10, key_after=5)
    victim = "s0_victim0" + "x" * 30
    for i in range(5):
        auth.failed(f"10.0.1.{i}", victim[:10] + f"guess{i}", "api")
    assert auth.retry_after("10.9.9.9", victim) == 1
    assert auth.retry_after("10.9.9.9", "s0_other00-key") is None
    auth.succeeded("10.0.0.1", hash_key(victim))
    assert auth.retry_after("10.0.0.1", victim) is None  # where it is in use, it works


def test_failures_are_forgotten_after_a_quiet_window() -> None:
    auth, clock = make(after=3, key_after=0, window_s=60)
    fail(auth, "10.0.0.1", 2)
    clock.now += 61
    fail(auth, "10.0.0.1", 2)
    assert auth.retry_after("10.0.0.1", "s0_x") is None
    fail(auth, "10.0.0.1", 1)
    assert auth.retry_after("10.0.0.1", "s0_x") == 1


def test_the_window_runs_from_the_end_of_a_pause() -> None:
    auth, clock = make(after=2, key_after=0, base_s=100, max_s=100, window_s=60)
    fail(auth, "10.0.0.1", 2)
    clock.now += 101  # longer than the window after the last failure, not after the pause
    fail(auth, "10.0.0.1", 1)
    assert auth.retry_after("10.0.0.1", "s0_x") == 100  # still counted: 3 failures


def test_zero_turns_either_count_off() -> None:
    auth, _ = make(after=0, key_after=0)
    fail(auth, "10.0.0.1", 100, secret="s0_same-prefix")
    assert auth.retry_after("10.0.0.1", "s0_same-prefix") is None


def test_the_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backoff_module, "MAX_TRACKED", 50)
    monkeypatch.setattr(backoff_module, "MAX_GOOD", 10)
    auth, _ = make(after=3, key_after=3)
    fail(auth, "10.0.0.1", 3)
    for i in range(200):  # a flood of other sources and prefixes
        auth.failed(f"10.1.{i // 250}.{i % 250}", f"s0_{i:07d}", "api")
        auth.failed("10.0.0.1", f"s0_keep{i:03d}", "api")  # the guesser stays the newest
        auth.succeeded(f"10.2.0.{i}", hash_key(GOOD))
    assert len(auth._failures) <= 50
    assert len(auth._good) <= 10
    assert auth.retry_after("10.0.0.1", "s0_x") is not None


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AFTER", "4"), ("KEY_AFTER", "0"), ("WINDOW_S", "30"),
                        ("BASE_S", "0.5"), ("MAX_S", "9")):
        monkeypatch.setenv(f"STAGE0_AUTH_BACKOFF_{name}", value)
    assert BackoffSettings.from_env() == BackoffSettings(4, 0, 30.0, 0.5, 9.0)
    monkeypatch.setenv("STAGE0_AUTH_BACKOFF_BASE_S", "10")
    with pytest.raises(ValueError, match="STAGE0_AUTH_BACKOFF_MAX_S"):
        BackoffSettings.from_env()
