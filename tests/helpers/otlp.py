"""Real OTLP receivers for the tests: OTLP/HTTP (protobuf) and OTLP/gRPC.

Both decode the exporter's requests with ``opentelemetry-proto`` and keep what arrived, flattened
into plain dicts that tests can search.
"""

from __future__ import annotations

import gzip
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    if kind == "bytes_value":
        return bytes(any_value.bytes_value)
    return getattr(any_value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass
class Collected:
    """Everything one receiver got: spans (flattened), metric names and the raw requests."""

    spans: list[dict[str, Any]] = field(default_factory=list)
    metric_names: set[str] = field(default_factory=set)
    metric_requests: int = 0
    histograms: list[dict[str, Any]] = field(default_factory=list)
    raw_span_bytes: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_traces(self, request: Any, raw: bytes) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "kind": KINDS.get(span.kind, str(span.kind)),
                        "attributes": _attributes(span.attributes),
                        "status": STATUS.get(span.status.code, str(span.status.code)),
                        "status_message": span.status.message,
                        "events": [{"name": e.name, "attributes": _attributes(e.attributes)}
                                   for e in span.events],
                        "links": [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                                  for link in span.links],
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                    })
        with self.lock:
            self.spans.extend(spans)
            self.raw_span_bytes.append(raw)

    def add_metrics(self, request: Any) -> None:
        names = {metric.name for rm in request.resource_metrics for sm in rm.scope_metrics
                 for metric in sm.metrics}
        points = [{"name": metric.name, "scope": sm.scope.name,
                   "temporality": metric.histogram.aggregation_temporality,
                   "attributes": _attributes(point.attributes), "count": point.count,
                   "sum": point.sum, "bucket_counts": list(point.bucket_counts),
                   "explicit_bounds": list(point.explicit_bounds),
                   "exemplar_traces": [e.trace_id.hex() for e in point.exemplars]}
                  for rm in request.resource_metrics for sm in rm.scope_metrics
                  for metric in sm.metrics if metric.HasField("histogram")
                  for point in metric.histogram.data_points]
        with self.lock:
            self.metric_names |= names
            self.metric_requests += 1
            self.histograms.extend(points)

    def histogram_points(self, name: str) -> list[dict[str, Any]]:
        """Every exported point of histogram ``name``, oldest first."""
        with self.lock:
            return [point for point in self.histograms if point["name"] == name]

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.spans)

    def wait_for_spans(self, predicate: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({s["name"] for s in spans})
                raise AssertionError(f"spans never matched; got {len(spans)}: {names}")
            time.sleep(0.1)


class _HttpHandler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        collected = self.server.collected
        if self.path == "/v1/traces":
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            collected.add_traces(request, body)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        elif self.path == "/v1/metrics":
            request = metrics_service_pb2.ExportMetricsServiceRequest()
            request.ParseFromString(body)
            collected.add_metrics(request)
            reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.collected = Collected()
        super().__init__(("127.0.0.1", 0), _HttpHandler)


class OtlpHttpReceiver:
    """An OTLP/HTTP endpoint on loopback; ``endpoint`` is the base URL for the exporter."""

    def __init__(self) -> None:
        self._server = _HttpServer()
        self.collected = self._server.collected
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.1})

    def __enter__(self) -> OtlpHttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class OtlpGrpcReceiver:
    """An OTLP/gRPC endpoint on loopback (trace and metric services)."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        self.collected = Collected()
        collected = self.collected

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collected.add_traces(request, request.SerializeToString())
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collected.add_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"

    def __enter__(self) -> OtlpGrpcReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop(grace=1)


def parse_prometheus(text: str) -> dict[str, float]:
    """``{'name{label="v",...}': value}`` for every sample line; raises on a malformed line."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if not key:
            raise AssertionError(f"malformed sample line: {line!r}")
        samples[key] = float(value)
    return samples
