"""Templates (Jinja2, autoescaped) and the filters they use."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import JsonLexer

TEMPLATES = Path(__file__).resolve().parent / "templates"
_LEXER = JsonLexer()
_FORMATTER = HtmlFormatter(nowrap=True)


def json_html(value: Any) -> Markup:
    """``value`` as indented JSON, syntax-highlighted by Pygments (which escapes the text),
    in a focusable, labelled block."""
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    return Markup('<pre class="json" tabindex="0">{}</pre>').format(
        Markup(highlight(text, _LEXER, _FORMATTER)))


def _instant(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)


def utc(value: Any) -> str:
    """An instant (ISO text or Unix seconds) as ``2026-03-17 10:00:00 UTC``."""
    at = _instant(value)
    return "" if at is None else at.strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: Any) -> str:
    at = _instant(value)
    return "" if at is None else at.isoformat().replace("+00:00", "Z")


def duration(seconds: float) -> str:
    """``2 h 05 min``, ``4 min``, ``40 s``; a negative span reads ``expired``."""
    if seconds <= 0:
        return "expired"
    s = int(seconds)
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(json_html=json_html, utc=utc, iso=iso, duration=duration)
    return env
