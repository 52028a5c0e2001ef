"""Metrics in the Prometheus text exposition format (0.0.4), for ``GET /metrics``.

Why not OpenTelemetry's Prometheus exporter: it adds ``otel_scope_name``,
``otel_scope_version`` and ``otel_scope_schema_url`` labels to every series (there is no switch
to leave them out) and registers itself in ``prometheus_client``'s process-wide registry, one
collector per reader; this renderer keeps the series and labels the README documents and reads
one :class:`~opentelemetry.sdk.metrics.export.InMemoryMetricReader` per pipeline process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum


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
