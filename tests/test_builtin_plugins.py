"""The built-in components, each driven directly, built exactly as the engine builds them.

Every component comes out of ``build_pipeline(load_config(path), build_plugin_manager(...))``
for a YAML written to disk, and talks to the moto server over real HTTP.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError
from helpers.support import pipeline_config, queue_counts, unique, wait_for, write_config

from sqs_processor.checks import LastCallCheck
from sqs_processor.config import load_config
from sqs_processor.errors import ConfigError, MessageError, error_code
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.message import Message, Record
from sqs_processor.pipeline import Pipeline, build_pipeline, close_pipeline

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SYSTEM_ATTRIBUTES = ("SentTimestamp", "ApproximateReceiveCount", "SenderId",
                     "ApproximateFirstReceiveTimestamp")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def build(tmp_path: Path, aws_env: dict[str, str]) -> Iterator[Callable[..., Pipeline]]:
    """Build a pipeline from ``pipeline_config(queue_url, bucket, **sections)`` written to disk."""
    built: list[Pipeline] = []

    def make(queue_url: str, bucket: str, **sections: Any) -> Pipeline:
        path = write_config(tmp_path, pipeline_config(queue_url, bucket, **sections),
                            f"pipeline{len(built)}.yaml")
        config = load_config(path)
        pipeline = build_pipeline(config, build_plugin_manager(config.plugin_settings))
        built.append(pipeline)
        return pipeline

    yield make
    for pipeline in built:
        close_pipeline(pipeline)


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., list]]:
    """The transform steps the engine builds for ``transforms: [*steps]``.

    Transforms make no AWS calls, so each distinct list is built once per module (building a
    pipeline creates boto3 clients, which is the slow part).
    """
    directory = tmp_path_factory.mktemp("offline")
    cache: dict[str, Pipeline] = {}

    def make(*steps: Any) -> list[Callable[[Record], Record | None]]:
        key = repr(steps)
        if key not in cache:
            config = pipeline_config("http://127.0.0.1:9/000000000000/offline", "offline-bucket",
                                     transforms=list(steps), aws={"region": "us-east-1"})
            path = write_config(directory, config, f"pipeline{len(cache)}.yaml")
            loaded = load_config(path)
            cache[key] = build_pipeline(loaded, build_plugin_manager(loaded.plugin_settings))
        return [step for _, step in cache[key].transforms]

    yield make
    for pipeline in cache.values():
        close_pipeline(pipeline)


def epoch_ms(instant: datetime) -> str:
    return str((instant - EPOCH) // timedelta(milliseconds=1))


def make_message(message_id: str | None = None, *, body: str = "{}",
                 received_at: datetime | None = None, receipt_handle: str = "rh-1",
                 attributes: dict[str, str] | None = None,
                 message_attributes: dict[str, dict[str, Any]] | None = None) -> Message:
    return Message(
        message_id=message_id or str(uuid.uuid4()),
        receipt_handle=receipt_handle,
        body=body,
        received_at=received_at or datetime.now(UTC),
        attributes=MappingProxyType(dict(attributes or {})),
        message_attributes=MappingProxyType(dict(message_attributes or {})),
    )


def check(pipeline: Pipeline, name: str):
    """Run the readiness check ``name`` the pipeline's plugins registered."""
    checks = {spec.name: spec for spec, _ in pipeline.health_checks}
    assert name in checks, f"no readiness check {name!r} among {sorted(checks)}"
    return checks[name].check()


def send(sqs: Any, queue_url: str, body: str, **kwargs: Any) -> str:
    return sqs.send_message(QueueUrl=queue_url, MessageBody=body, **kwargs)["MessageId"]


def object_bodies(s3: Any, bucket: str) -> dict[str, bytes]:
    result = {}
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", ()):
        result[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return result


# --------------------------------------------------------------------------------------------
# sqs source
# --------------------------------------------------------------------------------------------


def test_sqs_source_returns_the_envelope_with_every_attribute_in_sqs_shape(
    build, sqs, queue_url, bucket
):
    body = '  {"raw": "kept \\u00e9xactly"}\n\t'
    blob = b"\x00\x01\xfe\xff binary"
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    message_id = send(sqs, queue_url, body, MessageSystemAttributes={
        "AWSTraceHeader": {"DataType": "String", "StringValue": trace}}, MessageAttributes={
        "origin": {"DataType": "String", "StringValue": "shop"},
        "count": {"DataType": "Number", "StringValue": "42"},
        "blob": {"DataType": "Binary", "BinaryValue": blob},
        "kind": {"DataType": "String.custom", "StringValue": "x"},
    })
    source = build(queue_url, bucket, source={"wait_time_seconds": 1}).source

    before = datetime.now(UTC)
    messages = source.receive()
    after = datetime.now(UTC)

    assert len(messages) == 1
    message = messages[0]
    assert isinstance(message, Message)
    assert message.message_id == message_id
    assert message.receipt_handle
    assert message.body == body
    for name in SYSTEM_ATTRIBUTES:
        assert isinstance(message.attributes.get(name), str), name
    assert message.attributes["ApproximateReceiveCount"] == "1"
    assert message.attributes["AWSTraceHeader"] == trace
    sent = int(message.attributes["SentTimestamp"])
    assert before - timedelta(minutes=1) <= EPOCH + timedelta(milliseconds=sent) <= after
    assert message.message_attributes == {
        "origin": {"DataType": "String", "StringValue": "shop"},
        "count": {"DataType": "Number", "StringValue": "42"},
        "blob": {"DataType": "Binary", "BinaryValue": base64.b64encode(blob).decode("ascii")},
        "kind": {"DataType": "String.custom", "StringValue": "x"},
    }
    assert isinstance(message.message_attributes["blob"]["BinaryValue"], str)
    assert message.received_at.utcoffset() == timedelta(0)
    assert before <= message.received_at <= after
    assert message.sent_at == EPOCH + timedelta(milliseconds=sent)
    assert message.receive_count == 1


def test_sqs_source_keeps_the_fifo_system_attributes(build, sqs, bucket):
    fifo = sqs.create_queue(QueueName=unique("q") + ".fifo",
                            Attributes={"FifoQueue": "true"})["QueueUrl"]
    send(sqs, fifo, "ordered", MessageGroupId="group-1", MessageDeduplicationId="dedup-1")
    [message] = build(fifo, bucket, source={"wait_time_seconds": 1}).source.receive()
    assert message.body == "ordered"
    assert message.attributes["MessageGroupId"] == "group-1"
    assert message.attributes["MessageDeduplicationId"] == "dedup-1"
    assert message.attributes["SequenceNumber"].isdigit()
    for name in SYSTEM_ATTRIBUTES:
        assert name in message.attributes, name


def test_sqs_source_reads_the_queues_largest_message_and_visibility_once_at_start(
    build, sqs, bucket, caplog
):
    queue = sqs.create_queue(QueueName=unique("q"), Attributes={
        "MaximumMessageSize": "262144", "VisibilityTimeout": "45"})["QueueUrl"]
    source = build(queue, bucket).source
    assert source.max_message_bytes == 1024 * 1024  # before start: SQS's largest
    source.start()
    assert (source.max_message_bytes, source.visibility_timeout()) == (262144, 45.0)

    fixed = build(queue, bucket, source={"visibility_timeout": 90}).source
    fixed.start()  # the YAML's visibility wins; the size is still the queue's
    assert (fixed.max_message_bytes, fixed.visibility_timeout()) == (262144, 90.0)

    gone = build(queue.rsplit("/", 1)[0] + "/" + unique("missing"), bucket).source
    with caplog.at_level("WARNING", logger="sqs_processor"):
        gone.start()  # the queue cannot be asked: SQS's own limits are assumed, and said
    assert (gone.max_message_bytes, gone.visibility_timeout()) == (1024 * 1024, 30.0)
    [warning] = [r for r in caplog.records if getattr(r, "event", "") == "visibility_unknown"]
    assert "messages of up to 1048576 bytes" in warning.getMessage()


def test_sqs_source_returns_at_most_max_messages_per_receive(build, sqs, queue_url, bucket):
    for i in range(5):
        send(sqs, queue_url, f"m{i}")
    source = build(queue_url, bucket, source={"max_messages": 2, "wait_time_seconds": 0}).source
    assert source.max_batch == 2

    seen: set[str] = set()
    for _ in range(3):
        batch = source.receive()
        assert len(batch) <= 2
        seen.update(m.message_id for m in batch)
    wait_for(lambda: queue_counts(sqs, queue_url) == (0, 5), message="all 5 in flight")
    assert len(seen) == 5


def test_sqs_source_idle_delay_is_zero_after_any_messages_and_the_interval_when_empty(
    build, sqs, queue_url, bucket
):
    for i in range(3):
        send(sqs, queue_url, f"m{i}")
    source = build(queue_url, bucket, source={"max_messages": 3, "wait_time_seconds": 1,
                                              "poll_interval_seconds": 7}).source

    full = source.receive()
    assert len(full) == 3
    assert source.idle_delay(len(full)) == 0
    assert source.idle_delay(2) == 0
    assert source.idle_delay(1) == 0
    empty = source.receive()
    assert empty == []
    assert source.idle_delay(len(empty)) == 7.0


def test_sqs_source_release_makes_messages_visible_again_at_once(build, sqs, queue_url, bucket):
    ids = {send(sqs, queue_url, f"m{i}") for i in range(3)}
    # The queue's visibility timeout is 30 s: only the release can bring them back in time.
    source = build(queue_url, bucket, source={"wait_time_seconds": 1}).source
    received: list[Message] = []
    wait_for(lambda: received.extend(source.receive()) or len(received) >= 3,
             message="3 received")
    assert {m.message_id for m in received} == ids
    assert queue_counts(sqs, queue_url) == (0, 3)

    source.release(received)

    again = []
    wait_for(lambda: again.extend(source.receive()) or len(again) >= 3, timeout=5,
             message="released messages received again")
    assert {m.message_id for m in again} == ids
    assert all(m.receive_count == 2 for m in again)


def test_sqs_source_release_handles_more_than_ten_messages_and_skips_bad_handles(
    build, sqs, queue_url, bucket
):
    ids = {send(sqs, queue_url, f"m{i}") for i in range(12)}
    source = build(queue_url, bucket, source={"wait_time_seconds": 1}).source
    received: list[Message] = []
    wait_for(lambda: received.extend(source.receive()) or len(received) >= 12,
             message="12 received")
    assert queue_counts(sqs, queue_url) == (0, 12)
    bogus = make_message("bogus", receipt_handle="not-a-receipt-handle")

    source.release([received[0], bogus, *received[1:]])  # best effort: must not raise

    wait_for(lambda: queue_counts(sqs, queue_url) == (12, 0), timeout=5,
             message="all 12 released messages visible again")
    again: list[Message] = []
    wait_for(lambda: again.extend(source.receive()) or len(again) >= 12, timeout=5,
             message="released messages received again")
    assert {m.message_id for m in again} == ids


def test_sqs_receive_check_fails_with_the_error_code_and_recovers_after_a_good_receive(
    build, sqs, queue_url, bucket
):
    name = unique("missing")
    missing_url = f"{queue_url.rsplit('/', 1)[0]}/{name}"
    pipeline = build(missing_url, bucket, source={"wait_time_seconds": 0})
    assert check(pipeline, "sqs_receive").ok

    with pytest.raises(ClientError) as caught:
        pipeline.source.receive()
    code = error_code(caught.value)
    result = check(pipeline, "sqs_receive")
    assert not result.ok
    assert code in result.detail
    assert name in result.detail

    assert sqs.create_queue(QueueName=name)["QueueUrl"] == missing_url
    assert pipeline.source.receive() == []
    result = check(pipeline, "sqs_receive")
    assert result.ok
    assert code not in result.detail


def test_last_call_check_reports_the_last_outcome_and_when_the_last_success_was():
    check = LastCallCheck("write to bucket b")
    first = check()
    assert first.ok and first.detail == "no write to bucket b has completed yet"

    before = datetime.now(UTC).replace(microsecond=0)
    check.succeeded()
    ok = check()
    assert ok.ok and ok.detail.startswith("last write to bucket b succeeded at ")
    when = datetime.fromisoformat(ok.detail.rpartition(" at ")[2])
    assert when.utcoffset() == timedelta(0)
    assert before <= when <= datetime.now(UTC)

    check.failed(ConnectionError("connection refused"))
    failed = check()
    assert not failed.ok
    assert failed.detail.startswith("last write to bucket b failed: ")
    assert "connection refused" in failed.detail

    check.succeeded()
    assert check().ok  # the next success clears the failure


def test_message_sent_at_and_receive_count_read_the_system_attributes():
    instant = datetime(2025, 11, 28, 14, 59, 59, 999000, tzinfo=UTC)
    message = make_message(attributes={"SentTimestamp": epoch_ms(instant),
                                       "ApproximateReceiveCount": "3"})
    assert message.sent_at == instant
    assert message.sent_at.utcoffset() == timedelta(0)
    assert message.receive_count == 3

    unknown = make_message()
    assert unknown.sent_at is None
    assert unknown.receive_count == 1

    garbage = make_message(attributes={"SentTimestamp": "soon", "ApproximateReceiveCount": "x"})
    assert garbage.sent_at is None
    assert garbage.receive_count == 1


def test_message_sent_at_keeps_the_last_millisecond_of_every_hour_in_that_hour():
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for hour in range(1, 24 * 366):
        last_ms = start + timedelta(hours=hour, milliseconds=-1)
        message = make_message(attributes={"SentTimestamp": epoch_ms(last_ms)})
        assert message.sent_at == last_ms


# --------------------------------------------------------------------------------------------
# json_parse
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "parsed"), [
    ('{"a": 1, "b": [true, null], "c": {"d": "é"}}', {"a": 1, "b": [True, None], "c": {"d": "é"}}),
    ("[1, 2.5, \"x\"]", [1, 2.5, "x"]),
    ("42", 42),
    ('"just a string"', "just a string"),
    ("true", True),
    ("null", None),
    ("  \n{\"spaced\": 1}\n ", {"spaced": 1}),
], ids=["object", "array", "number", "string", "true", "null", "whitespace"])
def test_json_parse_adds_parsed_body_for_valid_json(offline, body, parsed):
    [step] = offline("json_parse")
    message = make_message(body=body)
    record = step(Record.from_message(message))
    assert record is not None
    assert "parsed_body" in record.document
    assert record.document["parsed_body"] == parsed
    assert record.document["body"] == body
    assert record.document["message_id"] == message.message_id


@pytest.mark.parametrize("body", [
    "not json at all {",
    '{"a": 1',
    "",
    "NaN",
    "Infinity",
    "-Infinity",
    '{"x": NaN}',
    '\ufeff{"a": 1}',
    "[" * 2000 + "]" * 2000,
    "1" * 5000,
    '"\\ud800"',
    '{"a": "\\udfff"}',
    "{'single': 'quotes'}",
], ids=["text", "truncated", "empty", "nan", "infinity", "neg-infinity", "nan-in-object", "bom",
        "nesting-2000", "integer-5000-digits", "lone-high-surrogate", "lone-low-surrogate",
        "single-quotes"])
def test_json_parse_leaves_non_json_bodies_untouched(offline, body):
    [step] = offline("json_parse")
    message = make_message(body=body)
    record = step(Record.from_message(message))
    assert record is not None
    assert "parsed_body" not in record.document
    assert record.document == {"message_id": message.message_id, "body": body}
    assert record.document["body"] is message.body


def test_json_parse_accepts_nesting_up_to_its_documented_limit_of_1024(offline):
    [step] = offline("json_parse")
    record = step(Record.from_message(make_message(body="[" * 1024 + "]" * 1024)))
    assert "parsed_body" in record.document
    record = step(Record.from_message(make_message(body="[" * 1025 + "]" * 1025)))
    assert "parsed_body" not in record.document


def test_json_parse_target_option_renames_the_field(offline):
    [step] = offline({"type": "json_parse", "target": "payload"})
    record = step(Record.from_message(make_message(body='{"k": 1}')))
    assert record.document["payload"] == {"k": 1}
    assert "parsed_body" not in record.document


@pytest.mark.parametrize("target", ["body", "message_id"])
def test_json_parse_refuses_a_target_that_would_overwrite_the_verbatim_body_or_id(
    tmp_path, aws_env, target
):
    config = pipeline_config("http://127.0.0.1:9/000000000000/offline", "offline-bucket",
                             transforms=[{"type": "json_parse", "target": target}])
    loaded = load_config(write_config(tmp_path, config))
    with pytest.raises(ConfigError) as caught:
        build_pipeline(loaded, build_plugin_manager(loaded.plugin_settings))
    assert caught.value.key == "transforms[0].target"


# --------------------------------------------------------------------------------------------
# enrich
# --------------------------------------------------------------------------------------------


def _enrich_message() -> Message:
    return make_message(
        receipt_handle="receipt-xyz",
        received_at=datetime(2025, 11, 28, 14, 0, 1, 250000, tzinfo=UTC),
        attributes={"SentTimestamp": "1764338401000", "ApproximateReceiveCount": "1",
                    "SenderId": "AIDAEXAMPLE"},
        message_attributes={"origin": {"DataType": "String", "StringValue": "shop"},
                            "blob": {"DataType": "Binary", "BinaryValue": "AAH+/w=="}},
    )


def test_enrich_adds_attributes_message_attributes_received_at_and_receipt_handle(offline):
    [step] = offline("enrich")
    message = _enrich_message()
    document = step(Record.from_message(message)).document

    assert document["message_id"] == message.message_id
    assert document["body"] == message.body
    assert document["attributes"] == dict(message.attributes)
    assert document["message_attributes"] == {
        "origin": {"DataType": "String", "StringValue": "shop"},
        "blob": {"DataType": "Binary", "BinaryValue": "AAH+/w=="},
    }
    assert document["received_at"] == "2025-11-28T14:00:01.250000+00:00"
    assert datetime.fromisoformat(document["received_at"]) == message.received_at
    assert document["receipt_handle"] == "receipt-xyz"
    # Everything it adds is plain JSON that the sink can store.
    assert orjson.loads(orjson.dumps(document)) == document


def test_enrich_copies_attributes_so_changing_the_document_leaves_the_message_alone(offline):
    [step] = offline("enrich")
    message = _enrich_message()
    document = step(Record.from_message(message)).document

    document["message_attributes"]["origin"]["StringValue"] = "tampered"
    document["message_attributes"]["new"] = {"DataType": "String", "StringValue": "x"}
    document["attributes"]["ApproximateReceiveCount"] = "99"

    assert message.message_attributes["origin"]["StringValue"] == "shop"
    assert "new" not in message.message_attributes
    assert message.attributes["ApproximateReceiveCount"] == "1"
    fresh = step(Record.from_message(message)).document
    assert fresh["message_attributes"]["origin"]["StringValue"] == "shop"
    assert fresh["attributes"]["ApproximateReceiveCount"] == "1"


def test_enrich_add_puts_static_fields_on_every_document_without_sharing_values(offline):
    add = {"env": "prod", "tags": ["a"], "meta": {"team": "data", "nested": {"k": [1]}}}
    [step] = offline({"type": "enrich", "add": add})

    first = step(Record.from_message(make_message())).document
    assert {k: first[k] for k in add} == add
    first["tags"].append("mutated")
    first["meta"]["nested"]["k"].append(2)
    first["meta"]["team"] = "other"

    second = step(Record.from_message(make_message())).document
    assert {k: second[k] for k in add} == {
        "env": "prod", "tags": ["a"], "meta": {"team": "data", "nested": {"k": [1]}}}


def test_enrich_drop_removes_fields_including_ones_it_adds(offline):
    steps = offline("json_parse", {"type": "enrich", "drop": ["receipt_handle", "parsed_body"]})
    record = Record.from_message(make_message(body='{"a": 1}'))
    for step in steps:
        record = step(record)
    assert "receipt_handle" not in record.document
    assert "parsed_body" not in record.document
    assert set(record.document) == {"message_id", "body", "attributes", "message_attributes",
                                    "received_at"}


# --------------------------------------------------------------------------------------------
# s3 sink
# --------------------------------------------------------------------------------------------


def _sink(build, queue_url, bucket, **options):
    return build(queue_url, bucket, sink={"prefix": "archive/", **options}).sink


@pytest.mark.parametrize(("instant", "folder"), [
    (datetime(2025, 11, 28, 14, 59, 59, 999000, tzinfo=UTC), "2025/11/28/14"),
    (datetime(2025, 12, 31, 23, 59, 59, 999000, tzinfo=UTC), "2025/12/31/23"),
    (datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC), "2026/01/01/00"),
], ids=["end-of-hour", "just-before-midnight", "midnight"])
def test_s3_sink_key_uses_the_utc_hour_of_sent_timestamp(
    build, s3, queue_url, bucket, instant, folder
):
    sink = _sink(build, queue_url, bucket)
    # Received a day later, so the wrong clock would give a different folder.
    message = make_message(attributes={"SentTimestamp": epoch_ms(instant)},
                           received_at=instant + timedelta(days=1, hours=5))
    result = sink.write(Record.from_message(message))

    key = f"archive/{folder}/{message.message_id}.json"
    assert result.location == f"s3://{bucket}/{key}"
    assert result.created is True
    assert list(object_bodies(s3, bucket)) == [key]


def test_s3_sink_key_does_not_depend_on_the_local_time_zone(
    build, s3, queue_url, bucket, monkeypatch
):
    sink = _sink(build, queue_url, bucket)
    instant = datetime(2025, 11, 28, 23, 30, tzinfo=UTC)
    message = make_message(attributes={"SentTimestamp": epoch_ms(instant)},
                           received_at=instant)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        result = sink.write(Record.from_message(message))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert result.location.endswith(f"/archive/2025/11/28/23/{message.message_id}.json")


def test_s3_sink_partition_time_received_uses_received_at(build, s3, queue_url, bucket):
    sink = _sink(build, queue_url, bucket, partition_time="received")
    sent = datetime(2025, 11, 28, 14, 59, 59, 999000, tzinfo=UTC)
    received = datetime(2025, 11, 28, 15, 0, 0, 1000, tzinfo=UTC)
    message = make_message(attributes={"SentTimestamp": epoch_ms(sent)}, received_at=received)
    result = sink.write(Record.from_message(message))
    key = f"archive/2025/11/28/15/{message.message_id}.json"
    assert result.location == f"s3://{bucket}/{key}"
    assert list(object_bodies(s3, bucket)) == [key]


@pytest.mark.parametrize("attributes", [{}, {"SentTimestamp": "not-a-number"}],
                         ids=["missing", "unreadable"])
def test_s3_sink_falls_back_to_received_at_without_a_sent_timestamp(
    build, s3, queue_url, bucket, attributes
):
    sink = _sink(build, queue_url, bucket)
    received = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    message = make_message(attributes=attributes, received_at=received)
    result = sink.write(Record.from_message(message))
    key = f"archive/2024/02/29/23/{message.message_id}.json"
    assert result.location == f"s3://{bucket}/{key}"
    assert list(object_bodies(s3, bucket)) == [key]


def test_s3_sink_stores_exactly_the_orjson_encoding_as_application_json(
    build, s3, queue_url, bucket
):
    sink = _sink(build, queue_url, bucket)
    record = Record.from_message(make_message(body='{"name": "Zoë 🚀"}'))
    record.document.update({"parsed_body": {"name": "Zoë 🚀", "n": 1.5, "list": [None, True]},
                            "big": 2**63})
    result = sink.write(record)
    key = result.location.removeprefix(f"s3://{bucket}/")

    stored = s3.get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == orjson.dumps(record.document)
    assert stored["ContentType"] == "application/json"


def test_s3_sink_second_write_of_the_same_message_keeps_the_first_object(
    build, s3, queue_url, bucket
):
    pipeline = build(queue_url, bucket)
    sink = pipeline.sink
    message = make_message(attributes={"SentTimestamp": epoch_ms(datetime.now(UTC))})
    first = Record(message=message, document={"message_id": message.message_id, "v": "first"})
    second = Record(message=message, document={"message_id": message.message_id, "v": "second"})

    created = sink.write(first)
    existing = sink.write(second)

    assert created.created is True
    assert existing.created is False
    assert existing.location == created.location
    bodies = object_bodies(s3, bucket)
    assert list(bodies.values()) == [orjson.dumps(first.document)]
    assert check(pipeline, "s3_write").ok  # an existing object is success, not an outage


def test_s3_sink_without_conditional_write_overwrites(build, s3, queue_url, bucket):
    sink = _sink(build, queue_url, bucket, conditional_write=False)
    message = make_message()
    first = Record(message=message, document={"v": "first"})
    second = Record(message=message, document={"v": "second"})

    assert sink.write(first).created is True
    assert sink.write(second).created is True
    bodies = object_bodies(s3, bucket)
    assert list(bodies.values()) == [orjson.dumps(second.document)]


def test_s3_sink_missing_bucket_raises_and_fails_the_s3_write_check_until_a_success(
    build, s3, queue_url
):
    missing = unique("bucket")
    pipeline = build(queue_url, missing)
    assert check(pipeline, "s3_write").ok

    record = Record.from_message(make_message())
    with pytest.raises(ClientError) as caught:
        pipeline.sink.write(record)
    assert not isinstance(caught.value, MessageError)
    assert error_code(caught.value) == "NoSuchBucket"
    result = check(pipeline, "s3_write")
    assert not result.ok
    assert "NoSuchBucket" in result.detail
    assert missing in result.detail

    s3.create_bucket(Bucket=missing)
    assert pipeline.sink.write(record).created is True
    result = check(pipeline, "s3_write")
    assert result.ok
    assert "NoSuchBucket" not in result.detail


@pytest.mark.parametrize("message_id", [
    "a/b", "../escape", "..", ".", "x/../../y", "/leading", "trailing/", "with space",
    "new\nline", "",
])
def test_s3_sink_rejects_message_ids_unfit_for_a_key_and_writes_nothing(
    build, s3, queue_url, bucket, message_id
):
    pipeline = build(queue_url, bucket)
    message = Message(message_id=message_id, receipt_handle="rh", body="{}",
                      received_at=datetime.now(UTC))
    with pytest.raises(MessageError):
        pipeline.sink.write(Record.from_message(message))
    assert object_bodies(s3, bucket) == {}
    assert check(pipeline, "s3_write").ok  # the message is at fault, not the bucket


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, "lone \ud800 surrogate",
                                   {"nested": ["\udfff"]}, {1, 2}],
                         ids=["int-over-64-bits", "int-under-64-bits", "lone-surrogate",
                              "nested-surrogate", "set"])
def test_s3_sink_raises_message_error_for_a_document_orjson_cannot_encode(
    build, s3, queue_url, bucket, value
):
    pipeline = build(queue_url, bucket)
    record = Record.from_message(make_message())
    record.document["added_by_a_transform"] = value
    with pytest.raises(MessageError):
        pipeline.sink.write(record)
    assert object_bodies(s3, bucket) == {}
    assert check(pipeline, "s3_write").ok


# --------------------------------------------------------------------------------------------
# sqs_delete
# --------------------------------------------------------------------------------------------


def _receive_all(source, count: int) -> list[Message]:
    received: list[Message] = []
    wait_for(lambda: received.extend(source.receive()) or len(received) >= count,
             message=f"{count} messages received")
    return received


def test_sqs_delete_deletes_a_batch_of_received_messages(build, sqs, queue_url, bucket):
    for i in range(4):
        send(sqs, queue_url, f"m{i}")
    pipeline = build(queue_url, bucket, source={"wait_time_seconds": 1})
    messages = _receive_all(pipeline.source, 4)
    assert queue_counts(sqs, queue_url) == (0, 4)

    assert pipeline.acker.ack(messages) == []
    assert queue_counts(sqs, queue_url) == (0, 0)


def test_sqs_delete_reports_invalid_receipt_handles_and_deletes_the_rest(
    build, sqs, queue_url, bucket
):
    for i in range(3):
        send(sqs, queue_url, f"m{i}")
    pipeline = build(queue_url, bucket, source={"wait_time_seconds": 1})
    good = _receive_all(pipeline.source, 3)
    # Two bad entries sharing a message id: failures must map back by position, not by id.
    bad_a = make_message("same-id", receipt_handle="not-a-receipt-handle-a")
    bad_b = make_message("same-id", receipt_handle="not-a-receipt-handle-b")
    batch = [good[0], bad_a, good[1], bad_b, good[2]]

    failures = pipeline.acker.ack(batch)

    assert len(failures) == 2
    assert [f.message for f in failures] == [bad_a, bad_b]
    assert failures[0].message is bad_a
    assert failures[1].message is bad_b
    for failure in failures:
        assert failure.code
        assert failure.code != "NoResult"
        assert failure.retryable is False
    assert queue_counts(sqs, queue_url) == (0, 0)


def test_sqs_delete_uses_the_source_queue_by_default(build, queue_url, bucket):
    assert build(queue_url, bucket).acker.queue_url == queue_url


def test_sqs_delete_queue_url_can_be_set_explicitly(build, sqs, queue_url, bucket):
    other = sqs.create_queue(QueueName=unique("other"))["QueueUrl"]
    send(sqs, other, "elsewhere")
    send(sqs, queue_url, "stays")
    pipeline = build(queue_url, bucket, ack={"type": "sqs_delete", "queue_url": other})
    assert pipeline.acker.queue_url == other

    raw = sqs.receive_message(QueueUrl=other, WaitTimeSeconds=1)["Messages"][0]
    message = make_message(raw["MessageId"], receipt_handle=raw["ReceiptHandle"])
    assert pipeline.acker.ack([message]) == []
    assert queue_counts(sqs, other) == (0, 0)
    assert queue_counts(sqs, queue_url) == (1, 0)

