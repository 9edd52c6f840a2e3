"""Shared by the hostile-input suites: a real ``stage0 serve`` on loopback (127.0.0.1 only),
and a tally of what hostile bodies got back, so a suite can count the ALLOWs and fail on any.

Bounded: one server per module, on SQLite in a temporary directory, with an unlimited key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from stage0.store import Store
from stage0.store.keys import create_key
from tests.service.conftest import Server, start_server

FROZEN_AT = "2026-03-17T10:00:00Z"  # a Tuesday, inside business hours


@dataclass
class Tally:
    """What a batch of hostile bodies got: each ALLOW (with its body), and a count per
    outcome (``ALLOW``, ``DEFER``, ``DENY`` or the HTTP status of a refusal such as ``422``)."""

    allowed: list[Any] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, body: Any, outcome: str) -> None:
        self.outcomes[outcome] += 1
        if outcome == "ALLOW":
            self.allowed.append(body)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def assert_no_allow(self) -> None:
        assert not self.allowed, (
            f"{len(self.allowed)} of {self.total} hostile bodies were ALLOW "
            f"({dict(self.outcomes)}); the first: {self.allowed[:3]!r}")


@dataclass
class Loopback:
    """A running server and a key with the ``check`` scope."""

    server: Server
    key: str
    client: httpx.Client

    def post(self, body: Any, path: str = "/check") -> httpx.Response:
        """POST ``body`` (JSON-encoded, or sent as is when it is ``bytes``)."""
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return self.client.post(path, content=content, headers={
            "x-api-key": self.key, "content-type": "application/json"})

    def tally(self, bodies: Iterable[Any], path: str = "/check") -> Tally:
        """Post every body; an answer is its verdict (200) or its status (anything else). A
        200 without a verdict counts as an ALLOW: it was not refused."""
        out = Tally()
        for body in bodies:
            response = self.post(body, path)
            if response.status_code == 200:
                verdict = response.json().get("verdict")
                out.add(body, verdict if verdict in ("DEFER", "DENY") else "ALLOW")
            else:
                out.add(body, str(response.status_code))
        return out


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loopback]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    db_url = f"sqlite:///{tmp / 'stage0.db'}"
    store = Store(db_url)
    store.migrate()
    _, key = create_key(store, tenant="default", name="hostile", scopes=["check"], plan="pro",
                        unlimited=True, principal="hostile-agent")
    store.dispose()
    server = start_server(db_url, tmp, frozen_time=FROZEN_AT)
    assert server.url.startswith("http://127.0.0.1:")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield Loopback(server, key, client)
    finally:
        server.stop()
