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

Plugin authors need no tracing code: the runner opens a span around every transform and the sink
write, and a plugin adds attributes to it with :func:`set_attributes`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.aws import AwsXRayPropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sqs_processor.errors import ConfigError
from sqs_processor.options import Option

log = logging.getLogger(__name__)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sqs-processor")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


PROTOCOLS = ("http/protobuf", "grpc")
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")

TELEMETRY_OPTIONS = (
    Option("enabled", bool, None,
           "false turns trace and metric export off (unset: OTEL_SDK_DISABLED). /metrics stays."),
    Option("service_name", str, None,
           "service.name of the traces and metrics (unset: OTEL_SERVICE_NAME, else "
           "sqs-processor)."),
    Option("endpoint", str, None,
           "OTLP endpoint, e.g. http://jaeger:4318 (unset: OTEL_EXPORTER_OTLP_ENDPOINT; no "
           "endpoint means no export)."),
    Option("protocol", str, None, "OTLP protocol (unset: OTEL_EXPORTER_OTLP_PROTOCOL, else "
           "http/protobuf).", choices=PROTOCOLS),
    Option("traces_sampler", str, None, "Sampler (unset: OTEL_TRACES_SAMPLER, else "
           "parentbased_always_on).", choices=SAMPLERS),
    Option("traces_sampler_arg", float, None,
           "Ratio for the traceidratio samplers (unset: OTEL_TRACES_SAMPLER_ARG, else 1.0).",
           minimum=0, maximum=1),
    Option("resource_attributes", dict, None,
           "Extra resource attributes, merged over OTEL_RESOURCE_ATTRIBUTES."),
    Option("metrics_export_interval_seconds", float, None,
           "How often metrics are pushed over OTLP (unset: OTEL_METRIC_EXPORT_INTERVAL, else 60).",
           minimum=1, maximum=3600),
    Option("instrument_aws", bool, True,
           "A client span for every AWS call (opentelemetry-instrumentation-botocore)."),
)

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

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
AGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
               86400.0, 345600.0, 1209600.0)


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TelemetrySettings:
    """The effective telemetry settings after the YAML and the environment are combined."""

    enabled: bool = True
    resource_attributes: Mapping[str, Any] = field(default_factory=dict)
    endpoint: str | None = None  # from the YAML: used as given
    protocol: str = "http/protobuf"
    export_traces: bool = False
    export_metrics: bool = False
    sampler: str | None = None
    sampler_arg: float | None = None
    metrics_interval: float | None = None
    instrument_aws: bool = True

    def describe(self) -> str:
        if not self.enabled:
            return "telemetry export off (OTEL_SDK_DISABLED or telemetry.enabled: false)"
        if not (self.export_traces or self.export_metrics):
            return "no OTLP endpoint: traces off, metrics at /metrics only"
        where = self.endpoint or "the OTEL_EXPORTER_OTLP_* endpoint"
        parts = [p for p, on in (("traces", self.export_traces), ("metrics", self.export_metrics))
                 if on]
        return f"exporting {' and '.join(parts)} over OTLP ({self.protocol}) to {where}"


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


def _exporter_off(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "otlp").strip().lower() in ("none", "")


def resolve_settings(
    options: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> TelemetrySettings:
    """Combine the validated ``telemetry:`` section with the ``OTEL_*`` environment.

    Raises ConfigError for an environment value the SDK would silently misread (an unknown
    protocol or sampler), naming the variable.
    """
    environ = os.environ if environ is None else environ
    options = dict(options or {})
    enabled = options.get("enabled")
    if enabled is None:
        enabled = not _env_flag(environ, "OTEL_SDK_DISABLED")

    protocol = options.get("protocol")
    if protocol is None:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            value = environ.get(name, "").strip()
            if value:
                if value not in PROTOCOLS:
                    raise ConfigError("telemetry.protocol", "is not a supported OTLP protocol",
                                      value=value, expected=" or ".join(PROTOCOLS), env=(name,))
                protocol = value
                break
    protocol = protocol or "http/protobuf"

    sampler = options.get("traces_sampler")
    if sampler is None and environ.get("OTEL_TRACES_SAMPLER", "").strip():
        sampler = environ["OTEL_TRACES_SAMPLER"].strip().lower()
        if sampler not in SAMPLERS:
            raise ConfigError("telemetry.traces_sampler", "is not a supported sampler",
                              value=sampler, expected="one of " + ", ".join(SAMPLERS),
                              env=("OTEL_TRACES_SAMPLER",))
    sampler_arg = options.get("traces_sampler_arg")
    if sampler_arg is None and environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip():
        raw = environ["OTEL_TRACES_SAMPLER_ARG"].strip()
        try:
            sampler_arg = float(raw)
        except ValueError:
            sampler_arg = -1.0
        if not 0.0 <= sampler_arg <= 1.0:
            raise ConfigError("telemetry.traces_sampler_arg", "is not a ratio", value=raw,
                              expected="a number from 0 to 1", env=("OTEL_TRACES_SAMPLER_ARG",))

    endpoint = options.get("endpoint")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError("telemetry.endpoint", "is not an http(s) URL", value=endpoint,
                          expected="e.g. http://jaeger:4318 (http/protobuf) or "
                                   "http://jaeger:4317 (grpc)")
    generic = bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())
    traces = enabled and not _exporter_off(environ, "OTEL_TRACES_EXPORTER") and bool(
        endpoint or generic or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip())
    metrics = enabled and not _exporter_off(environ, "OTEL_METRICS_EXPORTER") and bool(
        endpoint or generic or environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip())

    attributes: dict[str, Any] = {"service.version": _version()}
    for key, value in (options.get("resource_attributes") or {}).items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
            raise ConfigError(f"telemetry.resource_attributes.{key}", "has the wrong type",
                              value=value, expected="a string, number or boolean")
        attributes[key] = value
    if options.get("service_name"):
        attributes["service.name"] = options["service_name"]
    return TelemetrySettings(
        enabled=enabled, resource_attributes=attributes, endpoint=endpoint, protocol=protocol,
        export_traces=traces, export_metrics=metrics, sampler=sampler, sampler_arg=sampler_arg,
        metrics_interval=options.get("metrics_export_interval_seconds"),
        instrument_aws=bool(options.get("instrument_aws", True)),
    )


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


# --------------------------------------------------------------------------------------------
# Trace context from the producer
# --------------------------------------------------------------------------------------------

_W3C = TraceContextTextMapPropagator()
_XRAY = AwsXRayPropagator()


def producer_context(message: Any) -> Context | None:
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


# --------------------------------------------------------------------------------------------
# Helpers for plugin authors
# --------------------------------------------------------------------------------------------


def current_span() -> Span:
    """The span of the transform or sink write that is running (a no-op span if not traced)."""
    return trace.get_current_span()


def set_attributes(attributes: Mapping[str, Any] | None = None, **more: Any) -> None:
    """Add attributes to the span of the running transform or sink write.

    Values must be strings, booleans, numbers or lists of one of these (OpenTelemetry's rule).
    Never put a message body or other sensitive content in an attribute. Does nothing when
    tracing is off::

        from sqs_processor.telemetry import set_attributes
        set_attributes({"myplugin.customer_tier": "gold"}, matched_rules=2)
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attributes({**(attributes or {}), **more})


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


class Metrics:
    """The instruments the runner records. Every name starts with ``sqs_processor_``."""

    def __init__(self, provider: MeterProvider) -> None:
        meter = provider.get_meter("sqs_processor", _version())
        counter = meter.create_counter
        self.received = counter("sqs_processor_messages_received",
                                description="Messages returned by the source.")
        self.redelivered = counter(
            "sqs_processor_messages_redelivered",
            description="Received messages whose receive count was above 1.")
        self.processed = counter(
            "sqs_processor_messages_processed",
            description="Messages that went through the pipeline, by outcome "
                        "(written, existing, dropped).")
        self.failed = counter(
            "sqs_processor_messages_failed",
            description="Messages that failed, by stage and error type; left for redelivery.")
        self.deleted = counter("sqs_processor_messages_deleted",
                               description="Messages deleted from the source after processing.")
        self.ack_failed = counter(
            "sqs_processor_ack_failures",
            description="Deletes that failed for good, by error type (the message returns and "
                        "is recognised as already stored).")
        self.released = counter(
            "sqs_processor_messages_released",
            description="Messages handed back to the queue unprocessed (shutdown, system "
                        "failure).")
        self.system_failures = counter(
            "sqs_processor_system_failures",
            description="Failures blamed on the system (storage or AWS unreachable or refusing), "
                        "by stage and error type; polling pauses, the message is retried.")
        self.extensions = counter(
            "sqs_processor_visibility_extensions",
            description="Visibility heartbeat extensions of in-flight messages, by outcome.")
        self.error_sink = counter(
            "sqs_processor_messages_to_error_sink",
            description="Messages handed to the error sink (and deleted) after failing "
                        "errors.after_receives times, by stage.")
        self.reloads = counter(
            "sqs_processor_config_reloads",
            description="Live reloads of the pipeline config, by outcome (ok, rejected).")
        self.objects_written = counter("sqs_processor_objects_written",
                                       description="Objects the sink created.")
        self.objects_existing = counter(
            "sqs_processor_objects_existing",
            description="Writes skipped because the object was already there (a redelivery).")
        self.polls = counter("sqs_processor_polls",
                             description="Receive calls, by outcome (messages, empty, error).")
        self.aws_duration = meter.create_histogram(
            "sqs_processor_aws_call_duration_seconds", unit="s",
            description="Duration of AWS calls as the processor sees them (retries included), "
                        "by service, operation and outcome.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS)
        self.processing = meter.create_histogram(
            "sqs_processor_message_processing_duration_seconds", unit="s",
            description="From a worker picking a message up to its write being done.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS)
        self.age_at_write = meter.create_histogram(
            "sqs_processor_message_age_at_write_seconds", unit="s",
            description="Time from the message's SentTimestamp to its write (end-to-end lag).",
            explicit_bucket_boundaries_advisory=AGE_BUCKETS)
        self._gauges: dict[str, Callable[[], float]] = {}
        self.in_flight = meter.create_observable_gauge(
            "sqs_processor_messages_in_flight", callbacks=[self._observe("in_flight")],
            description="Messages received and not yet finished.")
        self.ready = meter.create_observable_gauge(
            "sqs_processor_ready", callbacks=[self._observe("ready")],
            description="1 when /readyz would answer 200, else 0.")

    def prometheus_names(self) -> set[str]:
        """The series names /metrics uses for these instruments (counters end in _total)."""
        from opentelemetry.metrics import Counter

        names = set()
        for instrument in vars(self).values():
            name = getattr(instrument, "name", None)
            if isinstance(name, str) and name.startswith("sqs_processor_"):
                names.add(f"{name}_total" if isinstance(instrument, Counter) else name)
        return names

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Set the function that reads gauge ``name`` (``in_flight``, ``ready``)."""
        self._gauges[name] = read

    def _observe(self, name: str) -> Callable[[Any], Iterable[Any]]:
        from opentelemetry.metrics import Observation

        def callback(_options: Any) -> Iterable[Any]:
            read = self._gauges.get(name)
            if read is None:
                return []
            try:
                return [Observation(float(read()))]
            except Exception:
                return []

        return callback


# --------------------------------------------------------------------------------------------
# The whole set-up
# --------------------------------------------------------------------------------------------


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
            provider.add_span_processor(BatchSpanProcessor(_exporter(self.settings, "traces")))
            self._tracer_provider = provider
            self.tracer: Tracer = provider.get_tracer("sqs_processor", _version())
        else:
            self.tracer = trace.NoOpTracer()
        self.prometheus = InMemoryMetricReader()
        readers: list[MetricReader] = [self.prometheus]
        if self.settings.export_metrics:
            interval = self.settings.metrics_interval
            readers.append(PeriodicExportingMetricReader(
                _exporter(self.settings, "metrics"),
                export_interval_millis=None if interval is None else interval * 1000))
        self._meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        self.metrics = Metrics(self._meter_provider)
        self._instrumented = False
        self._scrape_lock = threading.Lock()

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
        """Record the duration of every call ``client`` makes (a botocore event hook)."""
        histogram = self.metrics.aws_duration
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
            data = self.prometheus.get_metrics_data()
        return render_prometheus(data)


# --------------------------------------------------------------------------------------------
# Prometheus text format
# --------------------------------------------------------------------------------------------


def _escape_label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(attributes: Mapping[str, Any], extra: tuple[str, str] | None = None) -> str:
    pairs = [(k, v) for k, v in sorted(attributes.items())]
    if extra:
        pairs.append(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render_prometheus(data: Any) -> str:
    """Render an OpenTelemetry ``MetricsData`` as Prometheus text.

    Monotonic sums become counters with a ``_total`` suffix, other sums and gauges become
    gauges, histograms become ``_bucket``/``_sum``/``_count`` series. Resource attributes are
    left out (Prometheus adds its own target labels).
    """
    lines: list[str] = []
    seen: set[str] = set()
    metrics = [metric for rm in (data.resource_metrics if data else [])
               for sm in rm.scope_metrics for metric in sm.metrics]
    for metric in sorted(metrics, key=lambda m: m.name):
        point_data = metric.data
        name = metric.name
        if isinstance(point_data, Sum) and point_data.is_monotonic:
            kind, name = "counter", f"{name}_total"
        elif isinstance(point_data, Sum | Gauge):
            kind = "gauge"
        elif isinstance(point_data, Histogram):
            kind = "histogram"
        else:
            continue
        if name in seen:
            continue
        seen.add(name)
        lines.append(f"# HELP {name} {_escape_help(metric.description or name)}")
        lines.append(f"# TYPE {name} {kind}")
        for point in point_data.data_points:
            attributes = dict(point.attributes or {})
            if kind != "histogram":
                lines.append(f"{name}{_labels(attributes)} {_number(point.value)}")
                continue
            cumulative = 0
            for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
                cumulative += count
                lines.append(f"{name}_bucket{_labels(attributes, ('le', _number(bound)))} "
                             f"{cumulative}")
            lines.append(f"{name}_bucket{_labels(attributes, ('le', '+Inf'))} {point.count}")
            lines.append(f"{name}_sum{_labels(attributes)} {_number(point.sum)}")
            lines.append(f"{name}_count{_labels(attributes)} {point.count}")
    return "\n".join(lines) + "\n"
