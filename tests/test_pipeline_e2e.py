"""End to end, in process: the shipped components against SQS and S3 over HTTP (moto server)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
from helpers.support import pipeline_config, queue_counts, stored_objects, wait_for


def _send(sqs, queue_url, body, attributes=None):
    kwargs = {"QueueUrl": queue_url, "MessageBody": body}
    if attributes:
        kwargs["MessageAttributes"] = attributes
    return sqs.send_message(**kwargs)["MessageId"]


def test_messages_are_archived_in_the_spec_layout_and_format_then_deleted(
    sqs, s3, queue_url, bucket, run_pipeline
):
    json_id = _send(sqs, queue_url, '{"order": 7, "items": ["a", "b"], "ok": true}',
                    {"origin": {"DataType": "String", "StringValue": "shop"},
                     "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff\x10"},
                     "n": {"DataType": "Number", "StringValue": "42"}})
    text_id = _send(sqs, queue_url, "not json at all {")
    unicode_body = '{"name": "Zoë 🚀 名前", "rtl": "\u202eabc"}'
    unicode_id = _send(sqs, queue_url, unicode_body)
    sent = {json_id, text_id, unicode_id}

    with run_pipeline(pipeline_config(queue_url, bucket)) as running:
        wait_for(lambda: running.stats["processed"] == 3, message="3 messages processed")
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="queue empty")
        assert running.stop() == 0

    objects = stored_objects(s3, bucket)
    assert len(objects) == 3
    by_id = {doc["message_id"]: (key, doc) for key, doc in objects.items()}
    assert set(by_id) == sent

    for message_id, (key, doc) in by_id.items():
        sent_ms = int(doc["attributes"]["SentTimestamp"])
        hour = datetime.fromtimestamp(sent_ms / 1000, tz=UTC)
        assert key == f"archive/{hour:%Y/%m/%d/%H}/{message_id}.json"
        # received_at is ISO-8601 UTC with an explicit offset
        received = datetime.fromisoformat(doc["received_at"])
        assert received.utcoffset().total_seconds() == 0
        assert doc["receipt_handle"]
        assert doc["attributes"]["ApproximateReceiveCount"] == "1"

    key, doc = by_id[json_id]
    assert list(doc) == ["message_id", "body", "parsed_body", "attributes", "message_attributes",
                         "received_at", "receipt_handle"]
    assert doc["body"] == '{"order": 7, "items": ["a", "b"], "ok": true}'
    assert doc["parsed_body"] == {"order": 7, "items": ["a", "b"], "ok": True}
    assert doc["message_attributes"] == {
        "origin": {"DataType": "String", "StringValue": "shop"},
        "blob": {"DataType": "Binary", "BinaryValue": base64.b64encode(b"\x00\xff\x10").decode()},
        "n": {"DataType": "Number", "StringValue": "42"},
    }

    _, doc = by_id[text_id]
    assert doc["body"] == "not json at all {"
    assert "parsed_body" not in doc

    _, doc = by_id[unicode_id]
    assert doc["body"] == unicode_body
    assert doc["parsed_body"]["name"] == "Zoë 🚀 名前"

    head = s3.head_object(Bucket=bucket, Key=by_id[json_id][0])
    assert head["ContentType"] == "application/json"
    raw = s3.get_object(Bucket=bucket, Key=by_id[unicode_id][0])["Body"].read()
    assert orjson.loads(raw.decode("utf-8"))["body"] == unicode_body


def test_service_specific_endpoint_variables_take_precedence(
    sqs, s3, queue_url, bucket, run_pipeline, monkeypatch, emulator
):
    # The generic endpoint points nowhere; only the per-service variables lead to the emulator.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", emulator)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emulator)
    message_id = _send(sqs, queue_url, "via per-service endpoints")
    with run_pipeline(pipeline_config(queue_url, bucket)) as running:
        wait_for(lambda: running.stats["processed"] == 1, message="the message processed")
    assert [doc["message_id"] for doc in stored_objects(s3, bucket).values()] == [message_id]
    assert queue_counts(sqs, queue_url) == (0, 0)
