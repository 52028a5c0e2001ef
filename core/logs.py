"""Log output: readable text for a terminal, or one JSON object per line for a log pipeline.

Log calls pass structured fields through ``extra`` (``event``, ``message_id``, ``location``,
``count``...). The text format is the message alone, written to be read; the JSON format puts
the fields beside ``timestamp``, ``level``, ``logger`` and ``message``, and the ``trace_id`` and
``span_id`` of the active span (the message's trace) so logs and traces join. Control
characters in any value (CR/LF included) are escaped in text output, so one record is always one
line and a value cannot forge another record. The engine never logs message bodies or receipt
handles; as a last guard, token-like runs (a receipt handle quoted by a plugin's message or a
traceback) are redacted from every message and traceback
(:func:`~sqs_processor.errors.redact`).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from opentelemetry import trace

from sqs_processor.errors import escape, redact

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

LEVELS = ("debug", "info", "warning", "error")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``2026-11-28T14:30:00.123Z INFO    runner: stored message ...``.

    The structured fields are left out: the message already says them in words.
    """

    def format(self, record: logging.LogRecord) -> str:
        logger = record.name.removeprefix("sqs_processor.")
        message = escape(redact(record.getMessage()))
        line = f"{_timestamp(record)} {record.levelname:<7} {logger}: {message}"
        if record.exc_info:
            line += " | " + escape(redact(self.formatException(record.exc_info)))
        return line.rstrip()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, event, message and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or "log",
            "message": redact(record.getMessage()),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            document["trace_id"] = format(span_context.trace_id, "032x")
            document["span_id"] = format(span_context.span_id, "016x")
        for key, value in _fields(record).items():
            document.setdefault(key, value)
        if record.exc_info:
            document["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(document, default=str).decode("utf-8")


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # boto's own debug output includes request bodies; keep it out unless asked for directly.
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
