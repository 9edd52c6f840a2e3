"""Structured logs: with ``STAGE0_LOG_FORMAT=json``, every log line of a served process —
Stage0's own, uvicorn's errors and its access log — is one JSON object on stderr, with
``ts``, ``level``, ``logger``, ``event`` (the message) and, on every line that concerns a
request, its ``request_id`` (the ``X-Request-Id`` it was answered with).

The request id travels in a context variable (:data:`REQUEST_ID`) read by the formatter: set
as a routed request arrives (its valid ``X-Request-Id``, else an id its error answer reuses),
by ``decide_check`` once a decision's id is settled, and to the ``x-request-id`` a response
starts with (uvicorn writes the access line as it sends that). A log call may also pass
``extra={"request_id": ...}`` (the decision writer, which serves many requests from its own
thread, does). Off (the default, ``text``), nothing is set on the hot path.
"""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

FORMAT_ENV = "STAGE0_LOG_FORMAT"
FORMATS = ("text", "json")
ENABLED = False
"""Whether the request id is tracked (JSON logs are on in this process)."""
REQUEST_ID: ContextVar[str | None] = ContextVar("stage0_request_id", default=None)
"""The id of the request the current task serves (``None``: none, or JSON logs are off)."""

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime",
                                                             "color_message", "taskName"}
"""A record's own attributes; anything else was passed as ``extra`` and is logged as a field."""
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


def log_format() -> str:
    """``STAGE0_LOG_FORMAT``: ``text`` (the default) or ``json``."""
    value = os.environ.get(FORMAT_ENV, "text").strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"{FORMAT_ENV} must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        if rid:
            out["request_id"] = rid
        if (record.name == "uvicorn.access" and isinstance(record.args, tuple)
                and len(record.args) == len(_ACCESS_FIELDS)):
            out.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key != "request_id" and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def enable() -> None:
    """Track request ids (the JSON formatter is in use)."""
    global ENABLED  # noqa: PLW0603 - one setting per process
    ENABLED = True


def configure(fmt: str | None = None, level: int = logging.INFO) -> None:
    """In a process that does not run uvicorn's logging config (a test, a tool): with JSON,
    the root logger writes JSON lines to stderr."""
    if (fmt or log_format()) != "json":
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)  # other libraries' chatter (alembic's steps): warnings up
    logging.getLogger("stage0").setLevel(level)
    enable()


def uvicorn_log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's ``log_config`` for JSON: its loggers and Stage0's, one JSON line each on
    stderr (every worker process applies it as it starts)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json",
               "stream": "ext://sys.stderr"}
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "stage0.server.logs.JsonFormatter"}},
        "handlers": {"json": handler},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"handlers": ["json"], "level": upper, "propagate": False},
            "stage0": {"level": upper},
        },
        "root": {"handlers": ["json"], "level": "WARNING"},
    }
