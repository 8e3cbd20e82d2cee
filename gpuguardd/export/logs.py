"""structlog setup: JSON lines for journald (stderr not a TTY), readable console otherwise."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# The rule (SECURITY.md "No secrets in logs"): hooks are logged by tenant and kind, never by
# their arguments or environment values; as a last line of defence every rendered string has
# URL credentials and secret-looking key=value pairs masked.
_SECRET_WORD = r"(?:token|passw(?:or)?d|secret|api[_-]?key|authorization|credential|cookie)"  # noqa: S105
_KEY_VALUE = re.compile(
    rf"(?i)\b([\w.-]*{_SECRET_WORD}[\w.-]*)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]+")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_SECRET_KEY = re.compile(rf"(?i){_SECRET_WORD}")
MASK = "***"


def redact(text: str) -> str:
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    text = _BEARER.sub(rf"\1 {MASK}", text)
    return _KEY_VALUE.sub(rf"\1\2{MASK}", text)


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value)
    if depth < 4 and isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and _SECRET_KEY.search(k) else _scrub(v, depth + 1)
                for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    return value


def redact_secrets(logger: Any, method: str,
                   event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask credentials in every field before rendering."""
    for key in list(event_dict):
        event_dict[key] = (MASK if _SECRET_KEY.search(key) else _scrub(event_dict[key]))
    return event_dict


def setup(level: str = "info", stream: TextIO | None = None, *, json: bool | None = None) -> None:
    stream = stream or sys.stderr
    as_json = (not stream.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
