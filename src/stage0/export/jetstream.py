"""Export to NATS JetStream: one message per record, published in ``seq`` order, each publish
acknowledged by the stream before the next is sent.

Subject ``<subject_prefix>.<tenant>`` (default ``stage0.decisions.<tenant>``; characters a
subject token cannot hold are written ``%XX``), body the record as JSON (docs/audit.md), header
``Nats-Msg-Id: <export_id>``: JetStream drops a message whose id it already stored within the
stream's duplicate window (2 minutes unless the stream says otherwise), so a batch delivered
again after a lost acknowledgement is stored once. The stream (default ``stage0-decisions``,
subjects ``<subject_prefix>.>``) is created when it does not exist. Needs the ``nats`` extra
(``pip install 'stage0-authz[nats]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from typing import Any

import orjson

from stage0.store.export import ConfigError, ExportError, SinkConfig

EXTRA = "pip install 'stage0-authz[nats]'"


def subject_token(tenant: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-") else f"%{ord(c):02X}"
                   for c in tenant)


def _client() -> Any:
    try:
        return importlib.import_module("nats")  # the optional extra, not a dependency
    except ImportError:
        raise ConfigError(f"a `nats` sink needs the NATS client: {EXTRA}") from None


async def _quiet(*_: Any) -> None:
    """nats-py's error callbacks: failures reach the exporter as exceptions instead."""


class JetStreamSink:
    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self._nats = _client()
        self._url = config.url or "nats://127.0.0.1:4222"
        self._loop = asyncio.new_event_loop()
        self._nc: Any = None
        self._js: Any = None

    def subject(self, tenant: str) -> str:
        return f"{self.config.subject_prefix}.{subject_token(tenant)}"

    async def _connect(self) -> Any:
        if self._nc is not None and self._nc.is_connected:
            return self._js
        await self._drop()
        timeout = self.config.timeout_s
        self._nc = await self._nats.connect(
            servers=[self._url], connect_timeout=timeout, allow_reconnect=False,
            max_reconnect_attempts=0, error_cb=_quiet, disconnected_cb=_quiet,
            closed_cb=_quiet)
        self._js = self._nc.jetstream(timeout=timeout)
        errors = importlib.import_module("nats.js.errors")
        try:
            await self._js.stream_info(self.config.stream)
        except errors.NotFoundError:
            await self._js.add_stream(name=self.config.stream,
                                      subjects=[f"{self.config.subject_prefix}.>"])
        return self._js

    async def _drop(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):  # the connection is gone either way
                await nc.close()

    async def _publish(self, tenant: str, records: list[dict[str, Any]]) -> None:
        js = await self._connect()
        subject = self.subject(tenant)
        for record in records:
            await js.publish(subject, orjson.dumps(record), timeout=self.config.timeout_s,
                             stream=self.config.stream,
                             headers={"Nats-Msg-Id": record["export_id"]})

    def deliver(self, tenant: str, records: list[dict[str, Any]]) -> None:
        try:
            self._loop.run_until_complete(asyncio.wait_for(
                self._publish(tenant, records), self.config.timeout_s * 2))
        except Exception as exc:  # noqa: BLE001 - any failure: the batch is retried
            self._loop.run_until_complete(self._drop())
            raise ExportError(f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__) \
                from None

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._drop())
            self._loop.close()
