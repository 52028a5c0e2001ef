"""Telemetry settings: the YAML ``telemetry:`` section combined with the ``OTEL_*`` variables.

This module imports no part of the OpenTelemetry SDK, so loading and validating a config stays
cheap; :mod:`sqs_processor.telemetry` builds the providers from the settings resolved here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqs_processor.errors import ConfigError
from sqs_processor.options import Option, validate_options


def package_version() -> str:
    """sqs-processor's installed version (``0+unknown`` in a source tree never installed)."""
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
    exemplar_filter: str = "trace_based"

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
    options = validate_options(TELEMETRY_OPTIONS, options, "telemetry")  # defaults filled in
    enabled = options["enabled"]
    if enabled is None:
        enabled = not _env_flag(environ, "OTEL_SDK_DISABLED")
    endpoint = options["endpoint"]
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError("telemetry.endpoint", "is not an http(s) URL", value=endpoint,
                          expected="e.g. http://jaeger:4318 (http/protobuf) or "
                                   "http://jaeger:4317 (grpc)")
    generic = bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())
    traces = enabled and not _exporter_off(environ, "OTEL_TRACES_EXPORTER") and bool(
        endpoint or generic or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip())
    metrics = enabled and not _exporter_off(environ, "OTEL_METRICS_EXPORTER") and bool(
        endpoint or generic or environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip())
    sampler, sampler_arg = _sampling(options, environ)
    return TelemetrySettings(
        enabled=enabled, resource_attributes=_resource_attributes(options), endpoint=endpoint,
        protocol=_protocol(options, environ), export_traces=traces, export_metrics=metrics,
        sampler=sampler, sampler_arg=sampler_arg,
        metrics_interval=options["metrics_export_interval_seconds"],
        instrument_aws=options["instrument_aws"],
        exemplar_filter=_exemplar_filter(environ),
    )


def _protocol(options: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    if options["protocol"] is not None:
        return options["protocol"]
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = environ.get(name, "").strip()
        if value:
            if value not in PROTOCOLS:
                raise ConfigError("telemetry.protocol", "is not a supported OTLP protocol",
                                  value=value, expected=" or ".join(PROTOCOLS), env=(name,))
            return value
    return "http/protobuf"


EXEMPLAR_FILTERS = ("trace_based", "always_on", "always_off")


def _exemplar_filter(environ: Mapping[str, str]) -> str:
    value = environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip().lower() or "trace_based"
    if value not in EXEMPLAR_FILTERS:
        raise ConfigError("OTEL_METRICS_EXEMPLAR_FILTER", "is not a supported exemplar filter",
                          value=value, expected="one of " + ", ".join(EXEMPLAR_FILTERS),
                          env=("OTEL_METRICS_EXEMPLAR_FILTER",))
    return value


def _sampling(options: Mapping[str, Any],
              environ: Mapping[str, str]) -> tuple[str | None, float | None]:
    sampler = options["traces_sampler"]
    if sampler is None and environ.get("OTEL_TRACES_SAMPLER", "").strip():
        sampler = environ["OTEL_TRACES_SAMPLER"].strip().lower()
        if sampler not in SAMPLERS:
            raise ConfigError("telemetry.traces_sampler", "is not a supported sampler",
                              value=sampler, expected="one of " + ", ".join(SAMPLERS),
                              env=("OTEL_TRACES_SAMPLER",))
    sampler_arg = options["traces_sampler_arg"]
    if sampler_arg is None and environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip():
        raw = environ["OTEL_TRACES_SAMPLER_ARG"].strip()
        try:
            sampler_arg = float(raw)
        except ValueError:
            sampler_arg = -1.0
        if not 0.0 <= sampler_arg <= 1.0:
            raise ConfigError("telemetry.traces_sampler_arg", "is not a ratio", value=raw,
                              expected="a number from 0 to 1", env=("OTEL_TRACES_SAMPLER_ARG",))
    return sampler, sampler_arg


def _resource_attributes(options: Mapping[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {"service.version": package_version()}
    for key, value in (options["resource_attributes"] or {}).items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
            raise ConfigError(f"telemetry.resource_attributes.{key}", "has the wrong type",
                              value=value, expected="a string, number or boolean")
        attributes[key] = value
    if options["service_name"]:
        attributes["service.name"] = options["service_name"]
    return attributes

