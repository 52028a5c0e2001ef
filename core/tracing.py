"""Spans: the producer's trace context, the engine's spans per message, and the plugin helper.

Each message gets one ``process <queue>`` span (CONSUMER), in the producer's trace when the
message carries a W3C ``traceparent`` attribute or an X-Ray ``AWSTraceHeader``, linked to the
``receive <queue>`` span that returned it. Every transform and the sink write run inside their own
child span, so a plugin adds attributes with :func:`set_attributes` and writes no tracing code.
Attribute names follow the OpenTelemetry messaging conventions.

With tracing off the tracer is the API's no-op tracer: the engine still carries the producer's
context (logs show its trace id) and every call here costs next to nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.aws import AwsXRayPropagator
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sqs_processor.components import WriteResult
from sqs_processor.errors import describe_error, error_code
from sqs_processor.message import Message

log = logging.getLogger(__name__)

# Messaging semantic-convention attribute names used on our spans.
MESSAGING_SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
MESSAGE_ID = "messaging.message.id"
BATCH_COUNT = "messaging.batch.message_count"
BODY_SIZE = "messaging.message.body.size"
RECEIVE_COUNT = "sqs_processor.receive_count"
OUTCOME = "sqs_processor.outcome"
STAGE = "sqs_processor.stage"
DROPPED = "sqs_processor.dropped"

_W3C = TraceContextTextMapPropagator()
_XRAY = AwsXRayPropagator()


def producer_context(message: Message) -> Context | None:
    """The producer's trace context carried by ``message``, or None to start a new trace.

    A W3C ``traceparent`` (and ``tracestate``) message attribute wins; otherwise the
    ``AWSTraceHeader`` system attribute (X-Ray format). A malformed header is ignored.
    """
    carrier: dict[str, str] = {}
    for name in ("traceparent", "tracestate"):
        attribute = message.message_attributes.get(name)
        if isinstance(attribute, Mapping) and isinstance(attribute.get("StringValue"), str):
            carrier[name] = attribute["StringValue"]
    try:
        if "traceparent" in carrier:
            context = _W3C.extract(carrier)
            if trace.get_current_span(context).get_span_context().is_valid:
                return context
        header = message.attributes.get("AWSTraceHeader")
        if isinstance(header, str) and header:
            context = _XRAY.extract({"X-Amzn-Trace-Id": header})
            if trace.get_current_span(context).get_span_context().is_valid:
                return context
    except Exception:  # a propagator bug must never fail a message
        log.debug("ignoring an unreadable trace header on message %s", message.message_id)
    return None


def set_attributes(attributes: Mapping[str, Any] | None = None, **more: Any) -> None:
    """Add attributes to the span of the running transform or sink write.

    Values must be strings, booleans, numbers or lists of one of these (OpenTelemetry's rule).
    Never put a message body or other sensitive content in an attribute. Does nothing when
    tracing is off::

        from sqs_processor import set_attributes
        set_attributes({"myplugin.customer_tier": "gold"}, matched_rules=2)
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attributes({**(attributes or {}), **more})


def location_attributes(result: WriteResult) -> dict[str, Any]:
    """Span attributes for where a record was written (bucket and key for ``s3://`` URLs)."""
    attributes: dict[str, Any] = {"sqs_processor.location": result.location,
                                  OUTCOME: "written" if result.created else "existing"}
    if result.location.startswith("s3://"):
        bucket, _, key = result.location[5:].partition("/")
        attributes["aws.s3.bucket"] = bucket
        attributes["aws.s3.key"] = key
    return attributes


class MessageTracing:
    """The engine's spans for one pipeline: receive, process, stages, and how they end."""

    def __init__(self, tracer: Tracer, enabled: bool, queue: str, system: str) -> None:
        self.tracer = tracer
        self.enabled = enabled  # False: the no-op tracer; skip building attributes
        self.queue = queue
        self._queue_attributes = {MESSAGING_SYSTEM: system, DESTINATION: queue}
        self._receive_attributes = {**self._queue_attributes, OPERATION_TYPE: "receive",
                                    OPERATION_NAME: "receive"}

    def receive_span(self) -> Span:
        return self.tracer.start_span(f"receive {self.queue}", kind=SpanKind.CLIENT,
                                      attributes=self._receive_attributes)

    def open(self, message: Message, receive: Span) -> tuple[Span, Context]:
        """The message's ``process`` span and its context: in the producer's trace if any."""
        parent = producer_context(message)
        if not self.enabled:
            # No spans are recorded, but logs still carry the producer's trace id.
            context = parent or Context()
            return trace.get_current_span(context), context
        attributes: dict[str, Any] = dict(self._queue_attributes)
        attributes[OPERATION_TYPE] = "process"
        attributes[OPERATION_NAME] = "process"
        attributes[MESSAGE_ID] = message.message_id
        attributes[RECEIVE_COUNT] = message.receive_count
        attributes[BODY_SIZE] = len(message.body.encode("utf-8", "surrogatepass"))
        span = self.tracer.start_span(f"process {self.queue}", context=parent or Context(),
                                      kind=SpanKind.CONSUMER, attributes=attributes,
                                      links=[Link(receive.get_span_context())])
        return span, trace.set_span_in_context(span)

    def stage(self, stage: str) -> AbstractContextManager[Any]:
        """The span around one transform (``transform <name>``) or the write (``write <name>``)."""
        kind, _, name = stage.partition(":")
        label = f"transform {name}" if kind == "transform" else f"write {name}"
        return self.tracer.start_as_current_span(label, attributes={STAGE: stage})

    def span(self, name: str, **kwargs: Any) -> AbstractContextManager[Span]:
        """Any other span of the engine (the error sink write, a batch write)."""
        return self.tracer.start_as_current_span(name, **kwargs)

    @staticmethod
    def end(span: Span, outcome: str, *, error: BaseException | None = None,
            stage: str | None = None, detail: str | None = None) -> None:
        """End a ``process`` span with the message's outcome (and its error, if it failed)."""
        if not span.is_recording():
            return
        span.set_attribute(OUTCOME, outcome)
        if stage:
            span.set_attribute(STAGE, stage)
        if error is not None:
            span.set_attribute("error.type", error_code(error))
            span.set_status(Status(StatusCode.ERROR, f"{stage}: {describe_error(error)}"))
        elif detail:
            span.set_status(Status(StatusCode.ERROR, detail))
        span.end()


class TracedSink:
    """A per-message sink that adds where each record went to the current write span."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def write(self, record: Any) -> Any:
        written = self.sink.write(record)
        if isinstance(written, WriteResult):
            trace.get_current_span().set_attributes(location_attributes(written))
        return written
