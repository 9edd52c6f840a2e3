"""Webhooks on approval events: enqueued in the decision's transaction, delivered after it.

Each delivery is a POST of the event as JSON with the headers

- ``Stage0-Event``: ``approval.created``, ``approval.approved``, ``approval.rejected`` or
  ``approval.expired``;
- ``Stage0-Delivery``: the delivery's id (the same on every retry, for de-duplication);
- ``Stage0-Signature``: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the
  webhook's secret>``; receivers should reject a timestamp older than five minutes.

A 2xx answer delivers it. Anything else (or no answer in 10 s) is retried with exponential
backoff — 2, 4, 8 … seconds, capped at one hour — up to 8 attempts, then marked ``failed``.
Deliveries are claimed with a lease, so two server processes never send the same attempt.
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
from sqlalchemy import and_, select, update

from stage0.store.database import Store
from stage0.store.schema import webhook_deliveries, webhooks

log = logging.getLogger("stage0.webhooks")

EVENTS = ("approval.created", "approval.approved", "approval.rejected", "approval.expired")
MAX_ATTEMPTS = 8
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
    return bool(result.rowcount)


ENQUEUE_SELECT = ("SELECT id, events FROM webhooks WHERE tenant_id = :t AND disabled_us IS NULL")
ENQUEUE_INSERT = (
    "INSERT INTO webhook_deliveries (webhook_id, tenant_id, approval_id, event, event_id, "
    "payload, status, attempts, next_attempt_us, created_us) VALUES "
    "(:w, :t, :a, :e, :i, :p, 'pending', 0, :n, :n)"
)


def enqueue(store: Store, cursor: Any, tenant: str, event: str, event_id: str,
            approval_id: str | None, payload: dict[str, Any]) -> int:
    """Queue ``event`` for every subscribed webhook of ``tenant`` (in the caller's transaction)."""
    if event not in EVENTS:
        return 0
    cursor.execute(store.sql(ENQUEUE_SELECT), {"t": tenant})
    hooks = [row[0] for row in cursor.fetchall() if event in orjson.loads(row[1])]
    now_us = int(time.time() * 1e6)
    body = orjson.dumps({"event": event, "event_id": event_id, "tenant": tenant, **payload})
    for hook in hooks:
        cursor.execute(store.sql(ENQUEUE_INSERT), {
            "w": hook, "t": tenant, "a": approval_id, "e": event, "i": event_id,
            "p": body.decode(), "n": now_us})
    return len(hooks)


def deliveries_for(store: Store, approval_id: str) -> list[dict[str, Any]]:
    query = (select(webhook_deliveries, webhooks.c.url)
             .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
             .where(webhook_deliveries.c.approval_id == approval_id)
             .order_by(webhook_deliveries.c.id))
    with store.connect() as conn:
        return [{"id": r.id, "event": r.event, "url": r.url, "status": r.status,
                 "attempts": r.attempts, "last_status": r.last_status,
                 "last_error": r.last_error,
                 "delivered_at": None if r.delivered_us is None else r.delivered_us / 1e6}
                for r in conn.execute(query)]


class Deliverer:
    """A background thread that sends due deliveries; ``tick`` runs one pass (for tests)."""

    def __init__(self, store: Store, *, interval_s: float = 0.5,
                 on_tick: Callable[[], None] | None = None) -> None:
        self._store = store
        self._interval = interval_s
        self._on_tick = on_tick
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=TIMEOUT_S)
        self._thread = threading.Thread(target=self._run, name="stage0-webhooks", daemon=True)

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

    def _claim(self, now_us: int) -> list[Any]:
        with self._store.connect() as conn:
            due = list(conn.execute(
                select(webhook_deliveries, webhooks.c.url, webhooks.c.secret)
                .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
                .where(and_(webhook_deliveries.c.status == "pending",
                            webhook_deliveries.c.next_attempt_us <= now_us))
                .order_by(webhook_deliveries.c.next_attempt_us).limit(50)))
        claimed = []
        for row in due:
            with self._store.begin() as conn:  # a lease: only one process wins each attempt
                won = conn.execute(update(webhook_deliveries).where(and_(
                    webhook_deliveries.c.id == row.id,
                    webhook_deliveries.c.next_attempt_us == row.next_attempt_us,
                    webhook_deliveries.c.status == "pending",
                )).values(next_attempt_us=now_us + int(LEASE_S * 1e6))).rowcount
            if won:
                claimed.append(row)
        return claimed

    def tick(self) -> int:
        """Send every due delivery once; returns how many were attempted."""
        now_us = int(time.time() * 1e6)
        rows = self._claim(now_us)
        for row in rows:
            body = row.payload.encode()
            ts = int(time.time())
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
            if error is None:
                values.update(status="delivered", delivered_us=int(time.time() * 1e6))
            elif attempts >= MAX_ATTEMPTS:
                values.update(status="failed")
            else:
                delay = min(3600.0, backoff_base() * 2 ** (attempts - 1))
                values.update(next_attempt_us=int((time.time() + delay) * 1e6))
            with self._store.begin() as conn:
                conn.execute(update(webhook_deliveries)
                             .where(webhook_deliveries.c.id == row.id).values(**values))
        return len(rows)
