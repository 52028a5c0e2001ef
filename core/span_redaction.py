"""No receipt handle in an exported span: a span exporter that redacts before it sends.

The engine's own spans carry error texts that have already been through
:func:`~sqs_processor.errors.describe_error`, but an exception recorded on a span keeps
``str(exc)`` and its traceback, and the botocore instrumentation records the exceptions of the
AWS calls it wraps, where SQS may quote a receipt handle ("Value <handle> for parameter
ReceiptHandle is invalid"). Every span passes through :class:`RedactingSpanExporter` on its way
out, which redacts token-like runs from the status description and from every text attribute of
its events (``exception.message``, ``exception.stacktrace``). Spans without such text are passed
on as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from sqs_processor.errors import redact


def _redact_value(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def redacted_span(span: ReadableSpan) -> ReadableSpan:
    """``span``, or a copy with token-like runs redacted from its status and event texts."""
    description = span.status.description
    new_description = redact(description) if description else description
    events = list(span.events)
    new_events = []
    for event in events:
        attributes = dict(event.attributes or {})
        cleaned = {k: _redact_value(v) for k, v in attributes.items()}
        new_events.append(event if cleaned == attributes else
                          Event(event.name, cleaned, event.timestamp))
    if new_description == description and all(a is b for a, b in zip(new_events, events,
                                                                       strict=True)):
        return span
    return ReadableSpan(
        name=span.name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=span.attributes, events=new_events, links=span.links, kind=span.kind,
        status=Status(span.status.status_code, new_description), start_time=span.start_time,
        end_time=span.end_time, instrumentation_scope=span.instrumentation_scope)


class RedactingSpanExporter(SpanExporter):
    """Wraps ``exporter``; every span it exports goes through :func:`redacted_span` first."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([redacted_span(span) for span in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)
