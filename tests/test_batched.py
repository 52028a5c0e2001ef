"""Batched mode of the S3 sink: many messages per NDJSON object, deleted only after the write."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from helpers.support import pipeline_config, queue_counts, unique, wait_for, write_config

from sqs_processor.config import load_config
from sqs_processor.errors import ConfigError
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.pipeline import build_pipeline


def _objects(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    """Every object: its lines parsed, and its headers."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            response = s3.get_object(Bucket=bucket, Key=item["Key"])
            raw = response["Body"].read()
            if item["Key"].endswith(".gz"):
                raw = gzip.decompress(raw)
            lines = raw.decode("utf-8").splitlines()
            found[item["Key"]] = {"documents": [json.loads(line) for line in lines],
                                  "content_type": response["ContentType"],
                                  "encoding": response.get("ContentEncoding")}
    return found


def _batched(queue_url: str, bucket: str, **batch: Any) -> dict[str, Any]:
    return pipeline_config(queue_url, bucket, service={"max_in_flight": 40},
                           sink={"type": "s3", "bucket": bucket, "prefix": "archive/",
                                 "batch": batch})


def test_batches_hold_every_message_once_and_delete_after_the_write(sqs, s3, queue_url, bucket,
                                                                   run_pipeline):
    sent = {sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"n": i}))["MessageId"]:
            json.dumps({"n": i}) for i in range(35)}
    config = _batched(queue_url, bucket, max_records=10, max_age_seconds=1, compression="gzip")
    with run_pipeline(config) as running:
        wait_for(lambda: running.stats["processed"] == 35, timeout=30)
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0))
    objects = _objects(s3, bucket)
    documents = [doc for obj in objects.values() for doc in obj["documents"]]
    assert sorted(d["message_id"] for d in documents) == sorted(sent)
    assert all(d["body"] == sent[d["message_id"]] and d["parsed_body"] for d in documents)
    # Full batches of ten, and the rest flushed by age; none bigger than max_records.
    assert all(1 <= len(obj["documents"]) <= 10 for obj in objects.values())
    assert sum(len(obj["documents"]) == 10 for obj in objects.values()) >= 2
    for key, obj in objects.items():
        first = obj["documents"][0]["message_id"]
        assert key.startswith("archive/") and key.endswith(
            f"/{first}-{len(obj['documents'])}.ndjson.gz")
        assert obj["content_type"] == "application/x-ndjson" and obj["encoding"] == "gzip"
    text = running.runner.telemetry.prometheus_text()
    assert f"sqs_processor_objects_written_total {len(objects)}" in text


def test_stopping_flushes_open_batches(sqs, s3, queue_url, bucket, run_pipeline):
    for i in range(7):
        sqs.send_message(QueueUrl=queue_url, MessageBody=f"plain {i}")
    config = _batched(queue_url, bucket, max_records=40, max_age_seconds=600)
    with run_pipeline(config) as running:
        wait_for(lambda: running.stats["received"] == 7)
        assert running.stats["processed"] == 0  # waiting in an open batch
        assert running.stop() == 0
    [obj] = _objects(s3, bucket).values()
    assert len(obj["documents"]) == 7 and obj["encoding"] is None
    assert queue_counts(sqs, queue_url) == (0, 0)


def test_a_missing_bucket_holds_the_batch_until_it_exists(sqs, s3, queue_url, run_pipeline):
    bucket = unique("later")
    for i in range(5):
        sqs.send_message(QueueUrl=queue_url, MessageBody=f"m{i}")
    config = _batched(queue_url, bucket, max_records=5, max_age_seconds=1)
    with run_pipeline(config) as running:
        wait_for(lambda: running.runner.pause_reason() is not None)
        assert running.stats["failed"] == 0
        s3.create_bucket(Bucket=bucket)
        wait_for(lambda: running.stats["processed"] == 5, timeout=70)
        assert running.stats["received"] == 5
    [obj] = _objects(s3, bucket).values()
    assert len(obj["documents"]) == 5


def test_a_record_that_cannot_be_encoded_fails_alone(tmp_path, sqs, s3, queue_url, bucket,
                                                     run_pipeline):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "setter.py").write_text(
        "from sqs_processor import TransformSpec, hookimpl\n"
        "def put_a_set(record):\n"
        "    if 'bad' in record.message.body:\n"
        "        record.document['oops'] = {1, 2}\n"
        "    return record\n"
        "@hookimpl\n"
        "def sqs_processor_transforms():\n"
        "    return [TransformSpec('setter', lambda o, c: put_a_set, 'Breaks some documents.')]\n",
        encoding="utf-8")
    config = _batched(queue_url, bucket, max_records=10, max_age_seconds=1)
    config.update(plugins={"paths": [str(folder)]}, transforms=["setter"])
    sqs.send_message(QueueUrl=queue_url, MessageBody="bad one")
    good = [sqs.send_message(QueueUrl=queue_url, MessageBody=f"good {i}")["MessageId"]
            for i in range(3)]
    with run_pipeline(config) as running:
        wait_for(lambda: running.stats["processed"] == 3 and running.stats["failed"] >= 1)
    [obj] = _objects(s3, bucket).values()
    assert sorted(d["message_id"] for d in obj["documents"]) == sorted(good)


@pytest.mark.parametrize(("batch", "service", "match"), [
    ({"max_records": 100}, {"max_in_flight": 20}, r"service\.max_in_flight.*batch"),
    ({"max_recrods": 10}, {},
     r"sink\.batch\.max_recrods: is not an option.*did you mean 'max_records'"),
    ({"compression": "zstd"}, {}, r"sink\.batch\.compression"),
    ({"max_age_seconds": 0}, {}, r"sink\.batch\.max_age_seconds.*out of range"),
])
def test_batch_config_errors(tmp_path: Path, aws_env, batch, service, match):
    queue = "https://sqs.us-east-1.amazonaws.com/123456789012/q"
    config = pipeline_config(queue, "bucket-b", service=service,
                             sink={"type": "s3", "bucket": "bucket-b", "batch": batch})
    loaded = load_config(write_config(tmp_path, config))
    with pytest.raises(ConfigError, match=match):
        build_pipeline(loaded, build_plugin_manager(loaded.plugin_settings))
