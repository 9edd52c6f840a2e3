"""The sinks the decision log is exported to (``stage0.store.export``): NATS JetStream, a signed
webhook, OTLP logs. Each takes one tenant's batch of records in ``seq`` order and returns only
once the whole batch is acknowledged."""

from __future__ import annotations

import logging
from typing import Any

from stage0.store.database import Store
from stage0.store.export import (
    ConfigError,
    ExportConfig,
    Exporter,
    Sink,
    SinkConfig,
    config_from_env,
)

log = logging.getLogger("stage0.export")


def build_sink(config: SinkConfig) -> Sink:
    """The sink a configuration entry describes (its client imported only now)."""
    if config.type == "nats":
        from stage0.export.jetstream import JetStreamSink  # noqa: PLC0415

        return JetStreamSink(config)
    if config.type == "webhook":
        from stage0.export.webhook import WebhookSink  # noqa: PLC0415

        return WebhookSink(config)
    if config.type == "otlp":
        from stage0.export.otlp import OtlpLogsSink  # noqa: PLC0415

        return OtlpLogsSink(config)
    raise ConfigError(f"sink {config.name}: unknown type {config.type!r}")


def exporter_from_config(store: Store, config: ExportConfig, **kw: Any) -> Exporter:
    """The exporter of ``config``'s sinks (not started)."""
    return Exporter.from_config(store, config, build_sink, **kw)


def start_from_env(store: Store) -> Exporter | None:
    """The server's exporter, when ``STAGE0_EXPORT_CONFIG`` names a configuration with sinks
    (started); ``None`` otherwise."""
    config = config_from_env()
    if config is None or not config.sinks:
        return None
    exporter = exporter_from_config(store, config)
    exporter.start()
    log.info("exporting the decision log to %s",
             ", ".join(f"{s.name} ({s.type})" for s in config.sinks))
    return exporter
