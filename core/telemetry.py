"""Traces and metrics with OpenTelemetry, configured from the standard ``OTEL_*`` variables.

What is set up, and from where (the YAML ``telemetry:`` section wins over the environment):

* **Traces** are exported over OTLP when an endpoint is known (``telemetry.endpoint``,
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), with
  ``http/protobuf`` or ``grpc`` (``telemetry.protocol``, ``OTEL_EXPORTER_OTLP_PROTOCOL``). With
  no endpoint, no SDK tracer is installed: spans are the API's no-op spans and cost next to
  nothing. ``OTEL_SDK_DISABLED=true`` (or ``telemetry.enabled: false``) turns export off.
* **Metrics** are always collected, always readable at ``GET /metrics`` in Prometheus text
  format, and also exported over OTLP when an endpoint is known.
* **AWS calls** become client spans through ``opentelemetry-instrumentation-botocore``, and their
  latency is recorded in ``sqs_processor_aws_call_duration_seconds``.

The pieces live beside this module: :mod:`~sqs_processor.telemetry_settings` (what the YAML and
the environment ask for), :mod:`~sqs_processor.metrics` (the instruments),
:mod:`~sqs_processor.tracing` (the spans, the producer's context, the plugin helper) and
:mod:`~sqs_processor.prometheus` (``/metrics``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Tracer

from sqs_processor.histograms import HistogramExporter, with_histograms
from sqs_processor.metrics import Metrics
from sqs_processor.objectstore import ObjectStoreWriter
from sqs_processor.prometheus import render_prometheus
from sqs_processor.telemetry_settings import TelemetrySettings, package_version

log = logging.getLogger(__name__)


def _resource(settings: TelemetrySettings) -> Resource:
    resource = Resource.create(dict(settings.resource_attributes))
    name = resource.attributes.get("service.name", "")
    if not name or str(name).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "sqs-processor"}))
    return resource


def _sampler(settings: TelemetrySettings) -> Any:
    from opentelemetry.sdk.trace import sampling

    if settings.sampler is None:
        return None  # the SDK's default: parent-based, always on
    ratio = 1.0 if settings.sampler_arg is None else settings.sampler_arg
    return {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBased(
            sampling.TraceIdRatioBased(ratio)),
    }[settings.sampler]()


def _exporter(settings: TelemetrySettings, signal: str) -> Any:
    """An OTLP span or metric exporter. Without a YAML endpoint it reads the OTEL_* variables."""
    grpc = settings.protocol == "grpc"
    if signal == "traces":
        if grpc:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        cls: Any = OTLPSpanExporter
    else:
        if grpc:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
        cls = OTLPMetricExporter
    if settings.endpoint is None:
        return cls()
    base = settings.endpoint.rstrip("/")
    if grpc:
        return cls(endpoint=base, insecure=base.startswith("http://"))
    return cls(endpoint=f"{base}/v1/{signal}")



class Telemetry:
    """Tracer, metrics and their exporters for one process run."""

    def __init__(self, settings: TelemetrySettings | None = None) -> None:
        self.settings = settings or TelemetrySettings(enabled=False)
        resource = _resource(self.settings)
        self._tracer_provider: Any = None
        if self.settings.export_traces:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider(resource=resource, sampler=_sampler(self.settings))
            from sqs_processor.span_redaction import RedactingSpanExporter

            provider.add_span_processor(BatchSpanProcessor(
                RedactingSpanExporter(_exporter(self.settings, "traces"))))
            self._tracer_provider = provider
            self.tracer: Tracer = provider.get_tracer("sqs_processor", package_version())
        else:
            self.tracer = trace.NoOpTracer()
        self.prometheus = InMemoryMetricReader()
        self._resource = resource
        self._scope = InstrumentationScope("sqs_processor", package_version())
        readers: list[MetricReader] = [self.prometheus]
        otlp = None
        if self.settings.export_metrics:
            interval = self.settings.metrics_interval
            otlp = HistogramExporter(_exporter(self.settings, "metrics"), resource, self._scope)
            readers.append(PeriodicExportingMetricReader(
                otlp, export_interval_millis=None if interval is None else interval * 1000))
        self._meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        self.metrics = Metrics(self._meter_provider, self._exemplars())
        if otlp is not None:
            otlp.histograms = self.metrics.histograms()
        self._instrumented = False
        self._scrape_lock = threading.Lock()

    def _exemplars(self) -> str:
        """The histograms' exemplar filter: exemplars go out over OTLP only, and with
        ``trace_based`` only when there are traces to point at."""
        wanted = self.settings.exemplar_filter
        if not self.settings.export_metrics or (wanted == "trace_based"
                                                and not self.settings.export_traces):
            return "always_off"
        return wanted

    @property
    def tracing(self) -> bool:
        return self._tracer_provider is not None

    def start(self) -> None:
        """Instrument botocore for client spans when traces are exported."""
        if self.tracing and self.settings.instrument_aws:
            from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

            instrumentor = BotocoreInstrumentor()
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=self._tracer_provider)
                self._instrumented = True

    def watch_client(self, service: str, client: Any) -> None:
        """Record the duration of every call ``client`` makes (a botocore event hook); an
        obstore writer also gets the tracer for its client spans, as botocore gets it from the
        instrumentation."""
        histogram = self.metrics.aws_duration
        if isinstance(client, ObjectStoreWriter):
            aws_spans = self.tracing and self.settings.instrument_aws
            client.observe(histogram, self.tracer if aws_spans else None)
            return
        service_name = service

        def before(context: dict[str, Any], **_: Any) -> None:
            context["sqs_processor_started"] = time.perf_counter()

        def after(model: Any, context: dict[str, Any], **_: Any) -> None:
            _record(model, context, "ok")

        def failed(context: dict[str, Any], **kwargs: Any) -> None:
            _record(kwargs.get("model"), context, "error")

        def _record(model: Any, context: dict[str, Any], outcome: str) -> None:
            started = context.pop("sqs_processor_started", None)
            if started is None:
                return
            operation = getattr(model, "name", None) or "unknown"
            histogram.record(time.perf_counter() - started, {
                "service": service_name, "operation": operation, "outcome": outcome})

        events = client.meta.events
        events.register("before-call", before)
        events.register("after-call", after)
        events.register("after-call-error", failed)

    def shutdown(self) -> None:
        """Flush and stop the exporters (spans still queued are sent)."""
        if self._instrumented:
            from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

            try:
                BotocoreInstrumentor().uninstrument()
            except Exception as exc:  # never fail a shutdown over instrumentation
                log.debug("could not uninstrument botocore: %s", exc)
            self._instrumented = False
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        self._meter_provider.shutdown()

    def prometheus_text(self) -> str:
        """Every metric in Prometheus text exposition format 0.0.4."""
        with self._scrape_lock:
            data = with_histograms(self.prometheus.get_metrics_data(),
                                   self.metrics.histograms(), self._resource, self._scope)
        return render_prometheus(data)

