"""Traces, metrics and logs as an operator sees them: OTLP to a real receiver, /metrics, JSON logs.

The processor runs as a real subprocess configured only through the standard OTEL_* variables
and exports to an OTLP receiver running in the test (HTTP/protobuf and gRPC).
"""

from __future__ import annotations

import json
import secrets
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers.otlp import OtlpGrpcReceiver, OtlpHttpReceiver, parse_prometheus
from helpers.processes import ChildProcess as Process
from helpers.support import (
    RunningPipeline,
    cli_env,
    dropin_folder,
    pipeline_config,
    queue_counts,
    stored_objects,
    unique,
    wait_for,
    write_config,
)

from sqs_processor.config import load_config
from sqs_processor.errors import ConfigError
from sqs_processor.message import Message
from sqs_processor.prometheus import render_prometheus
from sqs_processor.telemetry import Telemetry
from sqs_processor.telemetry_settings import TelemetrySettings, resolve_settings
from sqs_processor.tracing import producer_context

FAILING_TRANSFORM = '''
from sqs_processor import TransformSpec, hookimpl


def explode(record):
    if "explode" in record.message.body:
        raise ValueError("refusing this one")
    return record


@hookimpl
def sqs_processor_transforms():
    return [TransformSpec("exploder", lambda options, context: explode,
                          "Raises for bodies containing 'explode'.")]
'''

PRODUCER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
XRAY_TRACE = "5759e988bd862e3fe1be46a994272793"
XRAY_PARENT = "53995c3f42cd8ad8"


def _traceparent(trace_id: str = PRODUCER_TRACE, span_id: str = PRODUCER_SPAN) -> dict[str, Any]:
    return {"traceparent": {"DataType": "String",
                            "StringValue": f"00-{trace_id}-{span_id}-01"}}


def _children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in spans
            if s["parent_span_id"] == parent["span_id"] and s["trace_id"] == parent["trace_id"]}


def _process_span(spans: list[dict[str, Any]], message_id: str) -> dict[str, Any]:
    matches = [s for s in spans if s["name"].startswith("process ")
               and s["attributes"].get("messaging.message.id") == message_id]
    assert len(matches) == 1, f"expected one process span for {message_id}, got {len(matches)}"
    return matches[0]


@pytest.fixture
def traced_run(tmp_path: Path, aws_env: dict[str, str], queue_url: str, bucket: str, sqs: Any):
    """Run the CLI with OTEL_* variables pointing at a receiver; yield a helper to drive it."""
    started: list[Process] = []

    def run(receiver: Any, *, protocol: str = "http/protobuf", extra_env: dict[str, str] | None
            = None, **sections: Any) -> Process:
        folder = dropin_folder(tmp_path, exploder=FAILING_TRANSFORM)
        config = pipeline_config(queue_url, bucket, plugins={"paths": [str(folder)]}, **sections)
        path = write_config(tmp_path, config)
        env = cli_env(aws_env, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                      OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_SERVICE_NAME="archiver-test",
                      OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,team=storage",
                      OTEL_BSP_SCHEDULE_DELAY="100", **(extra_env or {}))
        process = Process(["--log-level", "debug", "run", "--config", str(path),
                           "--log-format", "json"], env)
        started.append(process)
        process.wait_event("started")
        return process

    yield run
    for process in started:
        process.stop()


def _stop(process: Process) -> None:
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish() == 0


@pytest.mark.parametrize("client", ["obstore", "boto3"])
def test_span_tree_follows_the_producer_trace_to_the_s3_key(traced_run, sqs, s3, queue_url,
                                                             bucket, aws_env, client):
    with OtlpHttpReceiver() as receiver:
        process = traced_run(receiver, transforms=["json_parse", "enrich"],
                             sink={"client": client})
        queue = queue_url.rsplit("/", 1)[1]
        with_parent = sqs.send_message(QueueUrl=queue_url, MessageBody='{"order": 1}',
                                       MessageAttributes=_traceparent())["MessageId"]
        xray = sqs.send_message(
            QueueUrl=queue_url, MessageBody="x-ray producer",
            MessageSystemAttributes={"AWSTraceHeader": {
                "DataType": "String",
                "StringValue": f"Root=1-{XRAY_TRACE[:8]}-{XRAY_TRACE[8:]};"
                               f"Parent={XRAY_PARENT};Sampled=1"}})["MessageId"]
        malformed = sqs.send_message(
            QueueUrl=queue_url, MessageBody="bad header",
            MessageAttributes={"traceparent": {"DataType": "String",
                                               "StringValue": "00-zzzz-not-a-header"}},
        )["MessageId"]
        plain = sqs.send_message(QueueUrl=queue_url, MessageBody="no header")["MessageId"]
        ids = {with_parent, xray, malformed, plain}
        wait_for(lambda: len(stored_objects(s3, bucket)) == 4)
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0))
        _stop(process)
        stored = stored_objects(s3, bucket)
        keys = {doc["message_id"]: key for key, doc in stored.items()}
        assert set(keys) == ids

        spans = receiver.collected.wait_for_spans(
            lambda spans: sum(s["name"].startswith("process ") for s in spans) == 4)

    receives = [s for s in spans if s["name"] == f"receive {queue}"]
    assert receives, "no receive span"
    assert all(s["kind"] == "CLIENT" and s["attributes"]["messaging.system"] == "aws_sqs"
               and s["attributes"]["messaging.destination.name"] == queue for s in receives)
    assert sum(s["attributes"]["messaging.batch.message_count"] for s in receives) == 4
    resource = spans[0]["resource"]
    assert resource["service.name"] == "archiver-test"
    assert resource["deployment.environment"] == "test" and resource["team"] == "storage"

    for message_id in ids:
        process_span = _process_span(spans, message_id)
        attributes = process_span["attributes"]
        assert process_span["kind"] == "CONSUMER"
        assert attributes["messaging.system"] == "aws_sqs"
        assert attributes["messaging.destination.name"] == queue
        assert attributes["sqs_processor.receive_count"] == 1
        assert attributes["sqs_processor.outcome"] == "written"
        assert process_span["status"] != "ERROR"
        # Linked to the poll that received it.
        receive_ids = {s["span_id"] for s in receives}
        assert any(link["span_id"] in receive_ids for link in process_span["links"])
        children = _children(spans, process_span)
        assert {"transform json_parse", "transform enrich", "write s3",
                "ack sqs_delete"} <= set(children), sorted(children)
        write = children["write s3"]
        assert write["attributes"]["aws.s3.bucket"] == bucket
        assert write["attributes"]["aws.s3.key"] == keys[message_id]
        # The S3 call itself is a client span under the write, with the attributes the
        # botocore instrumentation gives, whichever client made it.
        puts = _children(spans, write)
        assert "S3.PutObject" in puts and puts["S3.PutObject"]["kind"] == "CLIENT"
        put = puts["S3.PutObject"]["attributes"]
        assert {k: put.get(k) for k in ("rpc.system", "rpc.service", "rpc.method",
                                        "http.status_code", "cloud.region")} == {
            "rpc.system": "aws-api", "rpc.service": "S3", "rpc.method": "PutObject",
            "http.status_code": 200, "cloud.region": aws_env["AWS_REGION"]}
        assert put["server.address"] == "127.0.0.1" and put["server.port"] > 0

    assert _process_span(spans, with_parent)["trace_id"] == PRODUCER_TRACE
    assert _process_span(spans, with_parent)["parent_span_id"] == PRODUCER_SPAN
    assert _process_span(spans, xray)["trace_id"] == XRAY_TRACE
    assert _process_span(spans, xray)["parent_span_id"] == XRAY_PARENT
    for fresh in (malformed, plain):
        span = _process_span(spans, fresh)
        assert span["parent_span_id"] == "" and span["trace_id"] not in (PRODUCER_TRACE,
                                                                         XRAY_TRACE)
    # One delete call serves the batch; it hangs under one message's ack span.
    deletes = [s for s in spans if s["name"] == "SQS.DeleteMessageBatch"]
    assert deletes and all(s["parent_span_id"] for s in deletes)


def test_a_failing_transform_is_recorded_as_an_error_on_its_span(traced_run, sqs, s3, queue_url,
                                                                  bucket):
    with OtlpHttpReceiver() as receiver:
        process = traced_run(receiver, transforms=["json_parse", "exploder"])
        bad = sqs.send_message(QueueUrl=queue_url, MessageBody="please explode")["MessageId"]
        good = sqs.send_message(QueueUrl=queue_url, MessageBody="fine")["MessageId"]
        process.wait_event("failed", message_id=bad)
        wait_for(lambda: len(stored_objects(s3, bucket)) == 1)
        _stop(process)
        spans = receiver.collected.wait_for_spans(
            lambda spans: {bad, good} <= {s["attributes"].get("messaging.message.id")
                                          for s in spans})
    failed = _process_span(spans, bad)
    assert failed["status"] == "ERROR"
    assert failed["attributes"]["sqs_processor.outcome"] == "failed"
    assert failed["attributes"]["sqs_processor.stage"] == "transform:exploder"
    assert failed["attributes"]["error.type"] == "ValueError"
    step = _children(spans, failed)["transform exploder"]
    assert step["status"] == "ERROR"
    assert any(e["name"] == "exception" and "refusing this one" in
               e["attributes"].get("exception.message", "") for e in step["events"])
    assert "write s3" not in _children(spans, failed)
    assert _process_span(spans, good)["status"] != "ERROR"


def test_grpc_protocol_exports_the_same_spans(traced_run, sqs, s3, queue_url, bucket):
    with OtlpGrpcReceiver() as receiver:
        process = traced_run(receiver, protocol="grpc")
        sent = sqs.send_message(QueueUrl=queue_url, MessageBody='{"via": "grpc"}',
                                MessageAttributes=_traceparent())["MessageId"]
        wait_for(lambda: len(stored_objects(s3, bucket)) == 1)
        _stop(process)
        spans = receiver.collected.wait_for_spans(
            lambda spans: any(s["attributes"].get("messaging.message.id") == sent
                              for s in spans))
        assert "sqs_processor_messages_received" in receiver.collected.metric_names
    process_span = _process_span(spans, sent)
    assert process_span["trace_id"] == PRODUCER_TRACE
    assert "write s3" in _children(spans, process_span)


def test_logs_join_traces_and_nothing_leaks_bodies_or_receipt_handles(traced_run, sqs, s3,
                                                                       queue_url, bucket):
    secrets_in_bodies = [f"SECRET-{secrets.token_hex(8)}" for _ in range(3)]
    with OtlpHttpReceiver() as receiver:
        process = traced_run(receiver, transforms=["json_parse", "exploder", "enrich"])
        ids = {}
        for i, secret in enumerate(secrets_in_bodies):
            body = json.dumps({"card": secret, "note": "explode" if i == 2 else "ok"})
            ids[sqs.send_message(QueueUrl=queue_url, MessageBody=body,
                                 MessageAttributes=_traceparent(
                                     trace_id=f"{i + 1:032x}"))["MessageId"]] = i
        wait_for(lambda: len(stored_objects(s3, bucket)) == 2)
        failed_id = next(m for m, i in ids.items() if i == 2)
        process.wait_event("failed", message_id=failed_id)
        _stop(process)
        spans = receiver.collected.wait_for_spans(
            lambda spans: set(ids) <= {s["attributes"].get("messaging.message.id")
                                       for s in spans})
        raw_exports = b"".join(receiver.collected.raw_span_bytes)

    handles = [doc["receipt_handle"] for doc in stored_objects(s3, bucket).values()]
    assert handles and all(handles)
    log_text = "".join(process.lines)
    for forbidden in [*secrets_in_bodies, *handles]:
        assert forbidden not in log_text
        assert forbidden.encode() not in raw_exports
        assert not any(forbidden in json.dumps(s, default=str) for s in spans)

    records = [json.loads(line) for line in process.lines if line.startswith("{")]
    assert all({"timestamp", "level", "event", "message"} <= set(r) for r in records)
    stored_events = [r for r in records if r["event"] == "stored"]
    assert len(stored_events) == 2
    for record in stored_events:
        index = ids[record["message_id"]]
        # The log line carries the trace the message arrived with: logs and traces join.
        assert record["trace_id"] == f"{index + 1:032x}"
        process_span = _process_span(spans, record["message_id"])
        assert record["span_id"] in {s["span_id"] for s in spans
                                     if s["trace_id"] == process_span["trace_id"]}
    failed = [r for r in records if r["event"] == "failed"]
    assert failed and failed[0]["trace_id"] == f"{3:032x}"


def _scrape(port: int) -> tuple[str, dict[str, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode("utf-8")
    return text, parse_prometheus(text)


def test_metrics_endpoint_counts_exactly_what_was_sent(tmp_path, sqs, s3, queue_url, bucket):
    from sqs_processor.health import HealthServer

    folder = dropin_folder(tmp_path, exploder=FAILING_TRANSFORM)
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(folder)]},
                             transforms=["json_parse", "exploder"])
    queue = queue_url.rsplit("/", 1)[1]
    with RunningPipeline(write_config(tmp_path, config)) as running:
        health = HealthServer(running.runner, "127.0.0.1", 0)
        health.start()
        try:
            text, before = _scrape(health.port)
            assert f'sqs_processor_messages_received_total{{queue="{queue}"}}' in before
            for i in range(5):
                sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"n": i}))
            sqs.send_message(QueueUrl=queue_url, MessageBody="explode now")
            wait_for(lambda: running.stats["processed"] == 5 and running.stats["failed"] >= 1)
            wait_for(lambda: _scrape(health.port)[1].get(
                f'sqs_processor_messages_deleted_total{{queue="{queue}"}}') == 5)
            text, after = _scrape(health.port)
        finally:
            health.stop()

    def moved(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    assert moved(f'sqs_processor_messages_received_total{{queue="{queue}"}}') == 6
    assert moved(f'sqs_processor_messages_deleted_total{{queue="{queue}"}}') == 5
    assert moved('sqs_processor_messages_processed_total{outcome="written"}') == 5
    assert moved("sqs_processor_objects_written_total") == 5
    assert moved("sqs_processor_objects_existing_total") == 0
    assert moved('sqs_processor_messages_failed_total{error_type="ValueError",'
                 'stage="transform:exploder"}') == 1
    assert moved("sqs_processor_message_age_at_write_seconds_count") == 5
    assert after['sqs_processor_message_age_at_write_seconds_bucket{le="+Inf"}'] == 5
    puts = ('sqs_processor_aws_call_duration_seconds_count{operation="PutObject",'
            'outcome="ok",service="s3"}')
    assert after[puts] == 5
    assert any(k.startswith("sqs_processor_aws_call_duration_seconds_count{operation="
                            '"ReceiveMessage"') for k in after)
    assert after["sqs_processor_messages_in_flight"] == 0  # all finished; the failure let go
    assert after["sqs_processor_ready"] == 1
    assert "# TYPE sqs_processor_message_age_at_write_seconds histogram" in text
    assert "# TYPE sqs_processor_messages_received_total counter" in text


def test_redelivered_and_existing_are_counted(tmp_path, sqs, s3, queue_url, bucket):
    config = pipeline_config(queue_url, bucket)
    sqs.send_message(QueueUrl=queue_url, MessageBody="twice")
    # First delivery: received by the test, so the processor sees receive count 2.
    first = sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=0,
                                MessageSystemAttributeNames=["All"])["Messages"]
    assert len(first) == 1
    with RunningPipeline(write_config(tmp_path, config)) as running:
        wait_for(lambda: running.stats["processed"] == 1)
        text = running.runner.telemetry.prometheus_text()
    samples = parse_prometheus(text)
    queue = queue_url.rsplit("/", 1)[1]
    assert samples[f'sqs_processor_messages_redelivered_total{{queue="{queue}"}}'] == 1


# -- settings --------------------------------------------------------------------------------


def test_no_endpoint_means_no_tracer_and_no_export():
    settings = resolve_settings({}, {})
    assert not settings.export_traces and not settings.export_metrics
    telemetry = Telemetry(settings)
    try:
        assert not telemetry.tracing
        assert not telemetry.tracer.start_span("x").is_recording()
    finally:
        telemetry.shutdown()


def test_environment_variables_configure_export():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_SAMPLER": "traceidratio",
           "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    settings = resolve_settings({}, env)
    assert settings.export_traces and settings.export_metrics
    assert settings.protocol == "grpc"
    assert (settings.sampler, settings.sampler_arg) == ("traceidratio", 0.25)
    assert resolve_settings({}, {**env, "OTEL_SDK_DISABLED": "true"}).export_traces is False
    only_traces = resolve_settings({}, {**env, "OTEL_METRICS_EXPORTER": "none"})
    assert only_traces.export_traces and not only_traces.export_metrics


def test_yaml_overrides_the_environment():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_SERVICE_NAME": "from-env"}
    settings = resolve_settings({"protocol": "http/protobuf", "service_name": "from-yaml",
                                 "endpoint": "http://jaeger:4318", "enabled": True}, env)
    assert settings.protocol == "http/protobuf"
    assert settings.endpoint == "http://jaeger:4318"
    assert settings.resource_attributes["service.name"] == "from-yaml"
    assert resolve_settings({"enabled": False}, env).export_traces is False


@pytest.mark.parametrize(("env", "key", "variable"), [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "telemetry.protocol",
     "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "telemetry.traces_sampler", "OTEL_TRACES_SAMPLER"),
    ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "telemetry.traces_sampler_arg",
     "OTEL_TRACES_SAMPLER_ARG"),
])
def test_bad_environment_values_are_config_errors(env, key, variable):
    with pytest.raises(ConfigError) as caught:
        resolve_settings({}, env)
    assert caught.value.key == key
    assert variable in str(caught.value)


def test_telemetry_section_is_validated(tmp_path, queue_url, bucket):
    config = pipeline_config(queue_url, bucket, telemetry={"protocl": "grpc"})
    with pytest.raises(ConfigError, match="did you mean 'protocol'"):
        load_config(write_config(tmp_path, config))
    config = pipeline_config(queue_url, bucket, telemetry={"endpoint": "jaeger:4318"})
    with pytest.raises(ConfigError, match=r"telemetry\.endpoint"):
        resolve_settings(load_config(write_config(tmp_path, config)).telemetry, {})


def test_validate_prints_the_telemetry_setup(tmp_path, aws_env, queue_url, bucket):
    import subprocess

    from helpers.support import CLI

    path = write_config(tmp_path, pipeline_config(queue_url, bucket))
    env = cli_env(aws_env, OTEL_EXPORTER_OTLP_ENDPOINT="http://jaeger:4318")
    result = subprocess.run([*CLI, "validate", "--config", str(path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "telemetry: exporting traces and metrics over OTLP (http/protobuf)" in result.stdout
    env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "thrift"
    result = subprocess.run([*CLI, "validate", "--config", str(path)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "telemetry.protocol" in result.stderr and "OTEL_EXPORTER_OTLP_PROTOCOL" in result.stderr


# -- trace context parsing -------------------------------------------------------------------


def _message(**kwargs: Any) -> Message:
    from datetime import UTC, datetime

    base = {"message_id": unique("m"), "receipt_handle": "rh", "body": "b",
            "received_at": datetime.now(UTC), "attributes": {}, "message_attributes": {}}
    base.update(kwargs)
    return Message(**base)


@pytest.mark.parametrize("header", [
    "", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "00-abc-def-01",
    "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-" + "g" * 32 + "-" + "1" * 16
    + "-01", "\x00\r\n", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra-" * 50,
])
def test_malformed_traceparent_starts_a_new_trace(header):
    message = _message(message_attributes={"traceparent": {"DataType": "String",
                                                           "StringValue": header}})
    assert producer_context(message) is None


@pytest.mark.parametrize("header", ["Root=1-zz;Parent=1", "Root=;Parent=;Sampled=",
                                    "Sampled=1", "x" * 5000])
def test_malformed_aws_trace_header_starts_a_new_trace(header):
    assert producer_context(_message(attributes={"AWSTraceHeader": header})) is None


def test_non_string_trace_attributes_are_ignored():
    message = _message(message_attributes={"traceparent": {"DataType": "Binary",
                                                           "BinaryValue": "AAEC"}})
    assert producer_context(message) is None


def test_prometheus_rendering_escapes_label_values():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    meter.create_counter("sqs_processor_test", description="line one\nline two").add(
        2, {"stage": 'transform:a"b\\c\nd'})
    text = render_prometheus(reader.get_metrics_data())
    assert '# HELP sqs_processor_test_total line one\\nline two' in text
    assert 'sqs_processor_test_total{stage="transform:a\\"b\\\\c\\nd"} 2' in text
    series = 'sqs_processor_test_total{stage="transform:a\\"b\\\\c\\nd"}'
    assert parse_prometheus(text) == {series: 2}


def test_settings_describe_is_honest():
    assert TelemetrySettings(enabled=True).describe() == (
        "no OTLP endpoint: traces off, metrics at /metrics only")
    assert TelemetrySettings(enabled=False).describe() == (
        "telemetry export off (OTEL_SDK_DISABLED or telemetry.enabled: false)")
    exporting = TelemetrySettings(enabled=True, endpoint="http://jaeger:4318",
                                  export_traces=True, export_metrics=False)
    assert exporting.describe() == (
        "exporting traces over OTLP (http/protobuf) to http://jaeger:4318")


def test_readme_metrics_table_lists_exactly_the_metrics():
    import re

    from helpers.support import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(sqs_processor_[a-z_]+)` \|", section, flags=re.M))
    telemetry = Telemetry()
    try:
        assert documented == telemetry.metrics.prometheus_names()
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_histograms_reach_otlp_with_their_counts_and_the_traces_of_their_messages(
        traced_run, sqs, s3, queue_url, bucket, temporality):
    processing = "sqs_processor_message_processing_duration_seconds"
    with OtlpHttpReceiver() as receiver:
        process = traced_run(receiver, extra_env={
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": temporality})
        sent = {sqs.send_message(QueueUrl=queue_url, MessageBody=f'{{"n": {n}}}',
                                 MessageAttributes=_traceparent(secrets.token_hex(16)))[
                                     "MessageId"] for n in range(3)}
        wait_for(lambda: len(stored_objects(s3, bucket)) == 3)
        wait_for(lambda: receiver.collected.histogram_points(processing))
        _stop(process)  # the last export goes out on shutdown
        points = receiver.collected.histogram_points(processing)
        spans = receiver.collected.wait_for_spans(
            lambda spans: sent <= {s["attributes"].get("messaging.message.id") for s in spans})
        puts = [p for p in receiver.collected.histogram_points(
            "sqs_processor_aws_call_duration_seconds")
            if p["attributes"] == {"service": "s3", "operation": "PutObject", "outcome": "ok"}]
    assert {p["scope"] for p in points} == {"sqs_processor"}
    assert {p["temporality"] for p in points} == {1 if temporality == "delta" else 2}
    if temporality == "delta":  # each message is in exactly one interval
        assert sum(p["count"] for p in points) == 3
        assert sum(p["count"] for p in puts) == 3
    else:  # each export holds everything so far
        assert [p["count"] for p in points] == sorted(p["count"] for p in points)
        assert points[-1]["count"] == 3 and puts[-1]["count"] == 3
    for point in points:
        assert sum(point["bucket_counts"]) == point["count"]
        assert len(point["bucket_counts"]) == len(point["explicit_bounds"]) + 1
    exemplars = {trace for p in points for trace in p["exemplar_traces"]}
    assert exemplars and exemplars <= {_process_span(spans, m)["trace_id"] for m in sent}
