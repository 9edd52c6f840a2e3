"""Webhooks on approval events: enqueued in the decision's transaction, delivered after it.

Each delivery is a POST of the event as JSON with the headers

- ``Stage0-Event``: ``approval.created``, ``approval.approved``, ``approval.rejected``,
  ``approval.expiring`` (a pending request is about to expire undecided) or ``approval.expired``;
- ``Stage0-Delivery``: the delivery's id (the same on every retry, for de-duplication);
- ``Stage0-Signature``: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the
  webhook's secret>``; receivers should reject a timestamp older than five minutes.

A 2xx answer delivers it. Anything else (or no answer in 10 s) is retried with exponential
backoff — 2, 4, 8 … seconds, capped at one hour — for 24 hours, then marked ``failed``.
Each attempt is claimed with a 30 s lease right before it is sent (sending takes at most 10 s),
and its outcome is recorded only if the lease is still this process's, so two server processes
do not send the same attempt. A removed webhook's pending deliveries are cancelled.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from sqlalchemy import ClauseElement, and_, bindparam, literal_column, select, update

from stage0.store.database import Store
from stage0.store.schema import webhook_deliveries, webhooks
from stage0.store.sql import compiled, insert

log = logging.getLogger("stage0.webhooks")

EVENTS = ("approval.created", "approval.approved", "approval.rejected", "approval.expiring",
          "approval.expired")
RETRY_FOR_S = 24 * 3600.0
LEASE_S = 30.0
TIMEOUT_S = 10.0


def backoff_base() -> float:
    return float(os.environ.get("STAGE0_WEBHOOK_BACKOFF_S", "2"))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(secret: str, header: str, body: bytes, *, now: float,
                     tolerance_s: float = 300.0) -> bool:
    """Receiver-side check of ``Stage0-Signature`` (what a chat bridge would do)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), f"t={ts},v1={parts.get('v1', '')}")


def add_webhook(store: Store, tenant: str, url: str, events: list[str]) -> tuple[str, str]:
    bad = [e for e in events if e not in EVENTS]
    if bad:
        raise ValueError(f"unknown event(s) {', '.join(bad)}; choose from {', '.join(EVENTS)}")
    if not url.startswith(("http://", "https://")):
        raise ValueError("the URL must be http:// or https://")
    hook_id, secret = "whk_" + secrets.token_hex(6), "whsec_" + secrets.token_urlsafe(24)
    with store.begin() as conn:
        conn.execute(webhooks.insert().values(
            id=hook_id, tenant_id=tenant, url=url, secret=secret,
            events=orjson.dumps(events or list(EVENTS)).decode(),
            created_us=int(time.time() * 1e6), disabled_us=None))
    return hook_id, secret


def list_webhooks(store: Store, tenant: str | None = None) -> list[dict[str, Any]]:
    query = select(webhooks.c.id, webhooks.c.tenant_id, webhooks.c.url, webhooks.c.events,
                   webhooks.c.created_us, webhooks.c.disabled_us)
    if tenant is not None:
        query = query.where(webhooks.c.tenant_id == tenant)
    with store.connect() as conn:
        return [{"id": r.id, "tenant": r.tenant_id, "url": r.url,
                 "events": orjson.loads(r.events), "active": r.disabled_us is None}
                for r in conn.execute(query)]


def remove_webhook(store: Store, hook_id: str) -> bool:
    with store.begin() as conn:
        result = conn.execute(update(webhooks).where(
            and_(webhooks.c.id == hook_id, webhooks.c.disabled_us.is_(None)))
            .values(disabled_us=int(time.time() * 1e6)))
        conn.execute(update(webhook_deliveries).where(and_(
            webhook_deliveries.c.webhook_id == hook_id,
            webhook_deliveries.c.status == "pending")).values(status="cancelled"))
    return bool(result.rowcount)


def public_url(url: str) -> str:
    """A receiver URL without credentials, path or query (chat-bridge URLs are secrets)."""
    parts = httpx.URL(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.host}{port}/…"


def _public_error(error: str | None, url: str) -> str | None:
    if error is None:
        return None
    return error.replace(url, public_url(url))


def _subscribed(_: str) -> ClauseElement:
    return select(webhooks.c.id, webhooks.c.events).where(and_(
        webhooks.c.tenant_id == bindparam("t"), webhooks.c.disabled_us.is_(None)))


def _enqueue(_: str) -> ClauseElement:
    c = webhook_deliveries.c
    return insert(webhook_deliveries).values({
        c.webhook_id: bindparam("w"), c.tenant_id: bindparam("t"), c.approval_id: bindparam("a"),
        c.event: bindparam("e"), c.event_id: bindparam("i"), c.payload: bindparam("p"),
        c.status: literal_column("'pending'"), c.attempts: literal_column("0"),
        c.next_attempt_us: bindparam("n"), c.created_us: bindparam("n")})


def enqueue(store: Store, cursor: Any, tenant: str, event: str, event_id: str,
            approval_id: str | None, payload: dict[str, Any], *,
            now_us: int | None = None) -> int:
    """Queue ``event`` for every subscribed webhook of ``tenant`` (in the caller's transaction).
    ``now_us``: the real time (the deliverer schedules by it), ``time.time()`` if not given."""
    if event not in EVENTS:
        return 0
    cursor.execute(compiled(store.dialect, _subscribed), {"t": tenant})
    hooks = [hook for hook, events in cursor.fetchall() if event in orjson.loads(events)]
    if now_us is None:
        now_us = int(time.time() * 1e6)
    body = orjson.dumps({"event": event, "event_id": event_id, "tenant": tenant, **payload})
    for hook in hooks:
        cursor.execute(compiled(store.dialect, _enqueue), {
            "w": hook, "t": tenant, "a": approval_id, "e": event, "i": event_id,
            "p": body.decode(), "n": now_us})
    return len(hooks)


def deliveries_for(store: Store, approval_id: str) -> list[dict[str, Any]]:
    query = (select(webhook_deliveries, webhooks.c.url)
             .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
             .where(webhook_deliveries.c.approval_id == approval_id)
             .order_by(webhook_deliveries.c.id))
    with store.connect() as conn:
        return [{"id": r.id, "event": r.event, "webhook_id": r.webhook_id,
                 "url": public_url(r.url), "status": r.status,
                 "attempts": r.attempts, "last_status": r.last_status,
                 "last_error": _public_error(r.last_error, r.url),
                 "delivered_at": None if r.delivered_us is None else r.delivered_us / 1e6}
                for r in conn.execute(query)]


class Deliverer:
    """A background thread that sends due deliveries; ``tick`` runs one pass (for tests)."""

    def __init__(self, store: Store, *, interval_s: float = 0.5,
                 on_tick: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``clock``: the real time in seconds (deliveries are scheduled and signed by it)."""
        self._store = store
        self._clock = clock
        self._interval = interval_s
        self._on_tick = on_tick
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=TIMEOUT_S)
        self._thread = threading.Thread(target=self._run, name="stage0-webhooks", daemon=True)
        self.on_attempt: Callable[[str], None] | None = None
        """Told each attempt's outcome: ``delivered``, ``retry`` or ``failed`` (the server's
        metrics, #16)."""

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=TIMEOUT_S + 5)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if self._on_tick is not None:
                    self._on_tick()
                self.tick()
            except Exception:  # keep delivering after a store or network failure
                log.exception("webhook delivery pass failed")

    def _due(self, now_us: int) -> list[Any]:
        with self._store.connect() as conn:
            return list(conn.execute(
                select(webhook_deliveries, webhooks.c.url, webhooks.c.secret)
                .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
                .where(and_(webhook_deliveries.c.status == "pending",
                            webhook_deliveries.c.next_attempt_us <= now_us,
                            webhooks.c.disabled_us.is_(None)))
                .order_by(webhook_deliveries.c.next_attempt_us).limit(50)))

    def _claim(self, row: Any) -> int | None:
        """Take a lease on one attempt right before sending it; ``None`` if another process has
        it (or it is no longer pending)."""
        lease = int((self._clock() + LEASE_S) * 1e6)
        with self._store.begin() as conn:
            won = conn.execute(update(webhook_deliveries).where(and_(
                webhook_deliveries.c.id == row.id,
                webhook_deliveries.c.next_attempt_us == row.next_attempt_us,
                webhook_deliveries.c.status == "pending",
            )).values(next_attempt_us=lease)).rowcount
        return lease if won else None

    def tick(self) -> int:
        """Send every due delivery once; returns how many were attempted."""
        sent = 0
        for row in self._due(int(self._clock() * 1e6)):
            if self._stop.is_set():
                break
            lease = self._claim(row)
            if lease is None:
                continue
            sent += 1
            body = row.payload.encode()
            ts = int(self._clock())
            status: int | None = None
            error: str | None = None
            try:
                response = self._client.post(row.url, content=body, headers={
                    "content-type": "application/json", "stage0-event": row.event,
                    "stage0-delivery": str(row.id),
                    "stage0-signature": sign(row.secret, ts, body)})
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            attempts = row.attempts + 1
            values: dict[str, Any] = {"attempts": attempts, "last_status": status,
                                      "last_error": error}
            delay = min(3600.0, backoff_base() * 2 ** (attempts - 1))
            if error is None:
                values.update(status="delivered", delivered_us=int(self._clock() * 1e6))
            elif self._clock() + delay - row.created_us / 1e6 > RETRY_FOR_S:
                values.update(status="failed")
            else:
                values.update(next_attempt_us=int((self._clock() + delay) * 1e6))
            if self.on_attempt is not None:
                self.on_attempt(str(values.get("status", "retry")))
            with self._store.begin() as conn:  # only while the lease is still ours
                conn.execute(update(webhook_deliveries).where(and_(
                    webhook_deliveries.c.id == row.id,
                    webhook_deliveries.c.next_attempt_us == lease,
                )).values(**values))
        return sent
