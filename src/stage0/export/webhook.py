"""Export to a webhook: one signed POST per batch.

The body is ``{"sink", "tenant", "records": [...]}`` (records in ``seq`` order, each with its
``export_id``), with the headers of the approval webhooks (``stage0.store.webhooks``):
``Stage0-Event: decision.export``, ``Stage0-Delivery: <tenant>/<first seq>-<last seq>`` (the
same on every retry of the batch) and ``Stage0-Signature: t=<unix seconds>,v1=<hex
HMAC-SHA256 of "<t>.<body>">`` with the sink's secret. A 2xx answer acknowledges the batch.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import orjson

from stage0.store.export import ConfigError, ExportError, SinkConfig
from stage0.store.webhooks import sign


class WebhookSink:
    def __init__(self, config: SinkConfig) -> None:
        if not config.url or not config.url.startswith(("http://", "https://")):
            raise ConfigError(f"sink {config.name}: a webhook needs an http(s) `url`")
        secret = config.secret
        if config.secret_env:
            secret = os.environ.get(config.secret_env) or None
            if secret is None:
                raise ConfigError(f"sink {config.name}: ${config.secret_env} is not set")
        if not secret:
            raise ConfigError(f"sink {config.name}: a webhook needs a `secret` or `secret_env`")
        self.config, self._url, self._secret = config, config.url, secret
        self._client = httpx.Client(timeout=config.timeout_s)

    def deliver(self, tenant: str, records: list[dict[str, Any]]) -> None:
        body = orjson.dumps({"sink": self.config.name, "tenant": tenant, "records": records})
        first, last = records[0]["seq"], records[-1]["seq"]
        try:
            response = self._client.post(self._url, content=body, headers={
                "content-type": "application/json", "stage0-event": "decision.export",
                "stage0-delivery": f"{tenant}/{first}-{last}",
                "stage0-signature": sign(self._secret, int(time.time()), body)})
        except httpx.HTTPError as exc:
            raise ExportError(f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise ExportError(f"HTTP {response.status_code}")

    def close(self) -> None:
        self._client.close()
