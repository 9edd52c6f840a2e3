"""Hostile input against a real ``stage0 serve`` on 127.0.0.1 (issue #17, items 2, 3 and 6).

Bounded and loopback only: two servers (SQLite), a few hundred requests each. Every answer to
an invalid request is tallied, and an ALLOW (or a 200, or a console sign-in) for any of them
fails the suite:

- bodies that are not strict JSON (``NaN``, ``Infinity``, ``1e999``, repeated member names,
  also spelled with escapes) on ``/check`` and on every routed endpoint that takes a body: a
  422 naming the field, never an answer;
- bodies declared as something other than JSON: a 415;
- secrets in bodies that cannot be parsed: nothing of their text is in the decision log, nor in
  ``GET /v1/decisions/{id}``;
- key guessing (300 wrong console sign-ins, 300 wrong keys on ``/check``): after the allowance,
  429 ``AUTH_BACKOFF`` with ``Retry-After``; a key already in use from the address keeps
  working, a new valid key waits for the back-off and then works.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from stage0.contract.strict_json import DUPLICATE_KEY, NOT_FINITE
from stage0.store import Store
from stage0.store.keys import create_key
from tests.helpers import request
from tests.service.conftest import fresh_database, start_server

FROZEN = "2026-03-17T10:00:00Z"  # a Tuesday, 10:00: the clean request is an ALLOW
AFTER = 10
BACKOFF_ENV = {"STAGE0_AUTH_BACKOFF_AFTER": str(AFTER), "STAGE0_AUTH_BACKOFF_KEY_AFTER": "30",
               "STAGE0_AUTH_BACKOFF_BASE_S": "1", "STAGE0_AUTH_BACKOFF_MAX_S": "2"}
"""The guessing server's back-off: after 10 failures, 1 s doubling up to 2 s (short, so that
the test can wait for it to end)."""
CAP_S = 2
ADMIN_SCOPES = ["check", "approve", "audit:read", "admin"]


@dataclass
class Target:
    url: str
    folder: Path
    keys: dict[str, str]
    http: httpx.Client
    """One client for every request (thread-safe; a client per request costs milliseconds)."""
    allowed: list[str] = field(default_factory=list)
    """Every invalid request that got an ALLOW, a 200 or a console sign-in."""

    def post(self, path: str, content: bytes, key: str | None = None,
             content_type: str | None = "application/json",
             **headers: str) -> httpx.Response:
        sent = {"x-api-key": key or self.keys["admin"], **headers}
        if content_type is not None:
            sent["content-type"] = content_type
        return self.http.post(self.url + path, content=content, headers=sent)

    def get(self, path: str) -> httpx.Response:
        return self.http.get(self.url + path, headers={"x-api-key": self.keys["admin"]})

    def tally(self, label: str, response: httpx.Response) -> dict[str, Any]:
        """The answer to an invalid request (recorded in ``allowed`` if it let it through)."""
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code in (200, 303) or body.get("verdict") == "ALLOW":
            self.allowed.append(f"{label}: {response.status_code} {response.text[:300]}")
        return body


@contextmanager
def serving(folder: Path, keys: tuple[str, ...], env: dict[str, str] | None = None,
            ) -> Iterator[Target]:
    with fresh_database("sqlite", folder) as url:
        store = Store(url)
        store.migrate()
        secrets = {name: create_key(store, tenant="default", name=name, scopes=ADMIN_SCOPES,
                                    plan="pro", unlimited=True, principal=name)[1]
                   for name in keys}
        store.dispose()
        with warnings.catch_warnings():  # start_server leaves its log file handle to the GC
            warnings.simplefilter("ignore", ResourceWarning)
            server = start_server(url, folder, frozen_time=FROZEN, env=env)
        target = Target(server.url, folder, secrets, httpx.Client(timeout=30))
        try:
            yield target
        finally:
            target.http.close()
            server.stop()
        assert target.allowed == [], "invalid requests let through:\n" + "\n".join(
            target.allowed)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with serving(tmp_path_factory.mktemp("hostile-json"), ("admin",)) as t:
        yield t


# -- bodies -------------------------------------------------------------------------------------

BASE = {k: v for k, v in request().items() if k not in ("tools", "side_effects", "context")}
SEARCH = '"tools": ["ticket_search"]'


def body(*members: str) -> bytes:
    """The clean request's goal and criteria, then ``members`` as written (raw JSON text)."""
    return ("{" + ", ".join([json.dumps(BASE)[1:-1], *members]) + "}").encode()


HOSTILE: list[tuple[str, bytes, str, str]] = [
    # (what, body, errors[0].type, errors[0].field)
    ("NaN in an unknown field", body(SEARCH, '"note": NaN'), NOT_FINITE, "note"),
    ("Infinity in an unknown field", body(SEARCH, '"note": Infinity'), NOT_FINITE, "note"),
    ("-Infinity in an unknown field", body(SEARCH, '"note": -Infinity'), NOT_FINITE, "note"),
    ("1e999 in an unknown field", body(SEARCH, '"note": 1e999'), NOT_FINITE, "note"),
    ("-1e999 in an unknown field", body(SEARCH, '"note": -1e999'), NOT_FINITE, "note"),
    ("1E400 deep in an unknown field", body(SEARCH, '"note": {"deep": [0, 1E400]}'),
     NOT_FINITE, "note.deep.1"),
    ("NaN in arguments", body(SEARCH, '"arguments": {"amount": NaN}'), NOT_FINITE,
     "arguments.amount"),
    ("1e999 in arguments", body(SEARCH, '"arguments": {"amount": 1e999}'), NOT_FINITE,
     "arguments.amount"),
    ("Infinity in context", body(SEARCH, '"context": {"cumulative_cost_usd": Infinity}'),
     NOT_FINITE, "context.cumulative_cost_usd"),
    ("1e999 in an unknown context key", body(SEARCH, '"context": {"budget": 1e999}'),
     NOT_FINITE, "context.budget"),
    ("NaN as a typed field", body(SEARCH, '"pro": NaN'), NOT_FINITE, "pro"),
    ("a refund, then a search, under the same names",
     body('"tools": ["payments.refund"]', '"side_effects": ["money movement"]', SEARCH,
          '"side_effects": []'), DUPLICATE_KEY, "tools"),
    ("the goal twice", body(SEARCH, '"goal": "Refund order 1042 in full"'), DUPLICATE_KEY,
     "goal"),
    ("the environment twice in context",
     body(SEARCH, '"context": {"environment": "production", "environment": "dev"}'),
     DUPLICATE_KEY, "context.environment"),
    ("an argument twice", body(SEARCH, '"arguments": {"amount": 1000000, "amount": 1}'),
     DUPLICATE_KEY, "arguments.amount"),
    ("a key twice in an object in a list",
     body(SEARCH, '"arguments": {"rows": [{"id": 1}, {"id": 2, "id": 3}]}'), DUPLICATE_KEY,
     "arguments.rows.1.id"),
    ("a name twice, once spelled with escapes",
     body('"tools": ["payments.refund"]', '"t\\u006fols": ["ticket_search"]'), DUPLICATE_KEY,
     "tools"),
    ("a duplicate whose lost colon an escaped colon makes up for",
     body(SEARCH, '"note": {"k": 1, "k": 2}', '"pad": "\\u003a"'), DUPLICATE_KEY, "note.k"),
]


def test_the_clean_body_is_allowed_and_the_duplicate_attack_would_matter(target: Target) -> None:
    """The suite can see an ALLOW: the last-wins reading of the refund body is one, its
    first-wins reading is not."""
    clean = target.post("/check", body(SEARCH))
    assert (clean.status_code, clean.json()["verdict"]) == (200, "ALLOW"), clean.text
    refund = target.post("/check", body('"tools": ["payments.refund"]',
                                        '"side_effects": ["money movement"]'))
    assert refund.status_code == 200
    assert refund.json()["verdict"] != "ALLOW", refund.text


@pytest.mark.parametrize(("what", "raw", "kind", "where"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_body_that_is_not_strict_json_is_a_422_never_an_allow(
        target: Target, what: str, raw: bytes, kind: str, where: str) -> None:
    rid = str(uuid.uuid4())
    answer = target.post("/check", raw, **{"x-request-id": rid})
    got = target.tally(what, answer)
    assert answer.status_code == 422, answer.text
    assert (got["code"], got["verdict"], got["decision"]) == ("REQUEST_INVALID", "DENY", "NO_GO")
    assert (got["errors"][0]["type"], got["errors"][0]["field"]) == (kind, where), got
    logged = target.get(f"/v1/decisions/{rid}").json()
    assert (logged["kind"], logged["http_status"], logged["verdict"]) == ("rejected", 422, "DENY")


REFUSED_TYPES = ["text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/xml", "application/jsonp",
                 "application/json; charset=iso-8859-1", "text/json", "json", ""]
ACCEPTED_TYPES = [None, "application/json", "application/json; charset=utf-8",
                  'application/json;charset="UTF-8"', "Application/JSON",
                  "application/vnd.api+json"]


def test_a_body_declared_as_something_else_is_a_415_and_json_types_are_read(
        target: Target) -> None:
    clean = body(SEARCH)
    for content_type in REFUSED_TYPES:
        answer = target.post("/check", clean, content_type=content_type)
        got = target.tally(f"/check as {content_type!r}", answer)
        assert (answer.status_code, got["code"]) == (415, "CONTENT_TYPE_UNSUPPORTED"), answer.text
        assert f"`{content_type}`" in got["detail"], got
    for accepted in ACCEPTED_TYPES:
        answer = target.post("/check", clean, content_type=accepted)
        assert (answer.status_code, answer.json()["verdict"]) == (200, "ALLOW"), accepted


ROUTED: list[tuple[str, bytes, str | None]] = [
    # (route, body, errors[0].type; None: declared as text/plain, a 415)
    ("/v1/approvals/apr_x/approve", b'{"reason": "ok", "reason": "fine"}', DUPLICATE_KEY),
    ("/v1/approvals/apr_x/approve", b'{"reason": "ok", "totp": NaN}', NOT_FINITE),
    ("/v1/approvals/apr_x/approve", b'{"reason": "ok"}', None),
    ("/v1/approvals/apr_x/reject", b'{"reason": "no", "re\\u0061son": "yes"}', DUPLICATE_KEY),
    ("/v1/approvals/apr_x/reject", b'{"reason": "no"}', None),
    ("/v1/break-glass", b'{"request_id": "a", "reason": "SEV1 outage", "request_id": "b"}',
     DUPLICATE_KEY),
    ("/v1/break-glass", b'{"request_id": "a", "reason": "SEV1", "x": 1e999}', NOT_FINITE),
    ("/v1/break-glass", b'{"request_id": "a", "reason": "SEV1 outage"}', None),
    ("/v1/tokens/consume", b'{"token": "a.b.c", "action_digest": "' + b"0" * 64
     + b'", "token": "d.e.f"}', DUPLICATE_KEY),
    ("/v1/tokens/consume", b'{"token": "a.b.c", "action_digest": Infinity}', NOT_FINITE),
    ("/v1/tokens/consume", b'{"token": "a.b.c", "action_digest": "' + b"0" * 64 + b'"}', None),
]


def test_every_route_that_takes_a_body_holds_it_to_strict_json(target: Target) -> None:
    for route, raw, kind in ROUTED:
        answer = target.post(route, raw, content_type="text/plain" if kind is None
                             else "application/json")
        got = target.tally(f"{route} {raw[:40]!r}", answer)
        if kind is None:
            assert (answer.status_code, got["code"]) == (415, "CONTENT_TYPE_UNSUPPORTED"), route
        else:
            assert (answer.status_code, got["code"]) == (422, "REQUEST_INVALID"), answer.text
            assert got["errors"][0]["type"] == kind, got


# -- secrets in bodies that cannot be parsed ---------------------------------------------------

LEAKS = [
    ("a number that is not JSON", lambda s: body(SEARCH, f'"context": {{"password": "{s}"}}',
                                                 '"note": NaN')),
    ("not JSON at all", lambda s: f'{{"goal": "x", "api_key": "{s}", '.encode()),
    ("over the size limit", lambda s: body(f'"api_token": "{s}"', '"pad": "' + "x" * 1_000_100
                                           + '"')),
]


@pytest.mark.parametrize(("what", "build"), LEAKS, ids=[leak[0] for leak in LEAKS])
def test_no_text_of_an_unparsable_body_is_stored(target: Target, what: str,
                                                 build: Any) -> None:
    secret = f"sk_live_{uuid.uuid4().hex}"
    raw = build(secret)
    rid = str(uuid.uuid4())
    answer = target.post("/check", raw, **{"x-request-id": rid})
    target.tally(what, answer)
    assert answer.status_code == 422
    assert secret not in answer.text
    record = target.get(f"/v1/decisions/{rid}")
    assert record.status_code == 200
    assert secret not in record.text, record.text[:500]
    logged = record.json()
    stored = min(len(raw), 1_000_000)
    assert logged["request"] == {"_unparsed": {"sha256": logged["input_sha256"],
                                               "bytes": stored}}
    on_disk = b"".join(p.read_bytes() for p in target.folder.glob("stage0.db*"))
    assert secret.encode() not in on_disk


# -- key guessing -------------------------------------------------------------------------------

def _console_login(client: httpx.Client, url: str, secret: str) -> httpx.Response:
    """A sign-in with the double-submit CSRF pair the form would carry (cookie = field)."""
    return client.post(f"{url}/console/login", data={"api_key": secret, "csrf_token": "t" * 43},
                       headers={"cookie": f"stage0_login_csrf={'t' * 43}"},
                       follow_redirects=False)


def _burst(send: Any, n: int, threads: int = 8) -> list[httpx.Response]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(send, range(n)))


def test_key_guessing_backs_off_and_a_valid_key_is_never_locked_out_for_good(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("hostile-guessing")
    with serving(folder, ("known", "fresh"), BACKOFF_ENV) as t:
        client = t.http
        known, fresh = t.keys["known"], t.keys["fresh"]
        # the service's own key is in use from this address before anyone guesses
        assert t.post("/check", body(SEARCH), key=known).status_code == 200
        # one wrong key on the API before the source backs off (then every guess may be a 429,
        # refused unlooked-up, so the API's failure count would depend on timing)
        assert t.post("/check", body(SEARCH), key="s0_first-wrong").status_code == 401

        started = time.monotonic()
        logins = _burst(lambda i: _console_login(client, t.url, f"s0_guess{i:05d}-wrong"), 300)
        elapsed = time.monotonic() - started
        for i, answer in enumerate(logins):
            t.tally(f"console sign-in {i}", answer)
        statuses = Counter(a.status_code for a in logins)
        assert set(statuses) <= {401, 429}, statuses
        assert statuses[401] <= AFTER + 8 + 2, (statuses, elapsed)  # + the 8 in flight
        assert statuses[429] >= 300 - AFTER - 8 - 2 * (1 + int(elapsed)), (statuses, elapsed)
        for answer in logins:
            if answer.status_code == 429:
                assert 1 <= int(answer.headers["retry-after"]) <= CAP_S

        checks = _burst(lambda i: t.post("/check", body(SEARCH), key=f"s0_{i:05d}guess"), 300)
        for i, answer in enumerate(checks):
            got = t.tally(f"/check with a wrong key {i}", answer)
            assert answer.status_code in (401, 429), answer.text
            if answer.status_code == 429:
                assert got["code"] == "AUTH_BACKOFF"
                assert got["retry_after_seconds"] == int(answer.headers["retry-after"])
        assert sum(a.status_code == 429 for a in checks) >= 250

        # while it backs off: the key in use passes, a new valid key waits (no oracle)
        wait = _backing_off(t)
        assert t.post("/check", body(SEARCH), key=known).status_code == 200
        assert _console_login(client, t.url, known).status_code == 303
        refused = t.post("/check", body(SEARCH), key=fresh)
        assert (refused.status_code, refused.json()["code"]) == (429, "AUTH_BACKOFF")
        assert _console_login(client, t.url, fresh).status_code == 429
        # and once the back-off ends, it works
        time.sleep(wait + 0.3)
        assert t.post("/check", body(SEARCH), key=fresh).status_code == 200
        assert _console_login(client, t.url, fresh).status_code == 303

        metrics = t.http.get(f"{t.url}/metrics").text
        # the source backs off after AFTER failures on any surface: the one wrong API key
        # before the burst is one of them
        assert _sample(metrics, 'stage0_auth_failures_total{surface="console"}') >= AFTER - 1
        assert _sample(metrics, 'stage0_auth_failures_total{surface="api"}') >= 1
        assert _sample(metrics, 'stage0_auth_backoff_total{scope="source"}') >= 400


def test_sources_back_off_apart_and_a_hammered_key_backs_off_everywhere(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """uvicorn takes the client address from X-Forwarded-For sent by 127.0.0.1 (its default
    FORWARDED_ALLOW_IPS): each forwarded address is a source of its own."""
    folder = tmp_path_factory.mktemp("hostile-sources")
    with serving(folder, ("victim", "bystander"), BACKOFF_ENV) as t:
        def check(key: str, source: str) -> httpx.Response:
            answer = t.post("/check", body(SEARCH), key=key, **{"x-forwarded-for": source})
            if key not in t.keys.values():
                t.tally(f"/check with a wrong key from {source}", answer)
            return answer

        guesses = [check(f"s0_wrong{i:03d}", "10.1.1.1").status_code for i in range(AFTER + 3)]
        assert guesses == [401] * AFTER + [429] * 3
        # another source is not held back by the first one's failures
        assert check(t.keys["bystander"], "10.1.1.2").status_code == 200
        assert check("s0_wrong-again", "10.1.1.2").status_code == 401

        # wrong secrets for one key's prefix, one per address: the key backs off (30)
        prefix = t.keys["victim"][:10]
        spread = [check(f"{prefix}{i:040d}", f"10.2.0.{i}").status_code for i in range(33)]
        assert spread == [401] * 30 + [429] * 3
        # the key itself, from an address it never used, waits too; then it works
        refused = check(t.keys["victim"], "10.3.0.1")
        assert refused.status_code == 429
        time.sleep(int(refused.headers["retry-after"]) + 0.3)
        assert check(t.keys["victim"], "10.3.0.1").status_code == 200


def _backing_off(t: Target) -> int:
    """Make sure 127.0.0.1 backs off now (one more wrong key re-arms a pause that ended):
    the seconds it does for."""
    for i in range(5):
        answer = t.post("/check", body(SEARCH), key=f"s0_rearm{i}")
        t.tally("/check re-arming the back-off", answer)
        if answer.status_code == 429:
            return int(answer.headers["retry-after"])
    raise AssertionError("127.0.0.1 does not back off")


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")
