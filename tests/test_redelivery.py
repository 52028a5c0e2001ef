"""Redelivery end to end: nothing is lost and nothing is stored twice when SQS delivers again.

The runner, the shipped components and a moto server over HTTP; queues and buckets are made
per test.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

from helpers.support import (
    pipeline_config,
    queue_counts,
    stored_objects,
    unique,
    wait_for,
    write_config,
)

from sqs_processor.config import load_config
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.message import Record
from sqs_processor.pipeline import build_pipeline, close_pipeline


def _check(running, name: str):
    checks = {spec.name: spec for spec, _ in running.pipeline.health_checks}
    return checks[name].check()


def _first_delivery_written_not_deleted(tmp_path: Path, queue_url: str, bucket: str) -> dict:
    """A consumer that receives the message (visibility 1 s), stores it and dies before the
    delete. Returns the document it stored."""
    config = pipeline_config(queue_url, bucket,
                             source={"visibility_timeout": 1, "wait_time_seconds": 1})
    loaded = load_config(write_config(tmp_path, config, "first-consumer.yaml"))
    pipeline = build_pipeline(loaded, build_plugin_manager(loaded.plugin_settings))
    try:
        messages = wait_for(pipeline.source.receive, timeout=10, message="first delivery")
        assert len(messages) == 1
        record = Record.from_message(messages[0])
        for _, step in pipeline.transforms:
            record = step(record)
        assert pipeline.sink.write(record).created is True
        return record.document
    finally:
        close_pipeline(pipeline)


def test_a_redelivered_message_that_was_already_stored_is_recognised_and_deleted(
    tmp_path, sqs, s3, queue_url, bucket, run_pipeline
):
    message_id = sqs.send_message(QueueUrl=queue_url, MessageBody='{"order": 1}')["MessageId"]
    first = _first_delivery_written_not_deleted(tmp_path, queue_url, bucket)
    assert first["attributes"]["ApproximateReceiveCount"] == "1"
    wait_for(lambda: queue_counts(sqs, queue_url) == (1, 0), timeout=10,
             message="the undeleted message to become visible again")

    with run_pipeline(pipeline_config(queue_url, bucket)) as running:
        wait_for(lambda: running.stats["processed"] == 1, message="redelivery processed")
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="queue empty")
        assert running.stop() == 0

    stats = running.stats
    assert stats["existing"] == 1
    assert stats["written"] == 0
    assert stats["failed"] == 0
    objects = stored_objects(s3, bucket)
    assert len(objects) == 1
    [document] = objects.values()
    assert document == first
    assert document["message_id"] == message_id
    assert document["attributes"]["ApproximateReceiveCount"] == "1"


def test_a_missing_bucket_holds_the_message_hidden_and_archives_it_once_the_bucket_exists(
    sqs, s3, run_pipeline
):
    queue_url = sqs.create_queue(QueueName=unique("q"),
                                 Attributes={"VisibilityTimeout": "2"})["QueueUrl"]
    bucket = unique("bucket")  # not created yet: every write fails with NoSuchBucket
    message_id = sqs.send_message(QueueUrl=queue_url, MessageBody='{"n": 1}')["MessageId"]

    with run_pipeline(pipeline_config(queue_url, bucket)) as running:
        wait_for(lambda: running.runner.pause_reason() is not None,
                 message="polling to pause on the system failure")
        assert "NoSuchBucket" in running.runner.pause_reason()
        result = _check(running, "s3_write")
        assert not result.ok
        assert "NoSuchBucket" in result.detail

        # Three visibility timeouts later: the heartbeat kept it hidden, so it was never
        # redelivered, never counted as the message's failure, and never deleted.
        time.sleep(6)
        stats = running.stats
        assert stats["received"] == 1
        assert stats["failed"] == 0 and stats["processed"] == 0 and stats["written"] == 0
        assert queue_counts(sqs, queue_url) == (0, 1)

        s3.create_bucket(Bucket=bucket)
        wait_for(lambda: running.stats["processed"] == 1, timeout=70,
                 message="the message to be archived once the bucket exists")
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="queue empty")
        assert _check(running, "s3_write").ok
        assert running.runner.pause_reason() is None
        assert running.stop() == 0

    stats = running.stats
    assert stats["written"] == 1
    assert stats["received"] == 1
    objects = stored_objects(s3, bucket)
    assert len(objects) == 1
    [document] = objects.values()
    assert document["message_id"] == message_id
    assert document["attributes"]["ApproximateReceiveCount"] == "1"


DROP_PLUGIN = textwrap.dedent('''
    """Drops every message whose body starts with "drop"."""

    from sqs_processor import TransformSpec, hookimpl


    def drop_marked(record):
        if record.message.body.startswith("drop"):
            return None
        return record


    @hookimpl
    def sqs_processor_transforms():
        return TransformSpec(name="drop_marked", factory=lambda options, context: drop_marked,
                             description="Drops messages whose body starts with 'drop'.")
''')


def test_a_message_a_transform_drops_is_deleted_without_an_object(
    tmp_path, sqs, s3, queue_url, bucket, run_pipeline
):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "dropper.py").write_text(DROP_PLUGIN, encoding="utf-8")
    dropped_id = sqs.send_message(QueueUrl=queue_url, MessageBody="drop me")["MessageId"]
    kept_id = sqs.send_message(QueueUrl=queue_url, MessageBody="keep me")["MessageId"]
    config: dict[str, Any] = pipeline_config(
        queue_url, bucket, plugins={"paths": [str(plugins)]},
        transforms=["json_parse", "drop_marked", "enrich"])

    with run_pipeline(config) as running:
        wait_for(lambda: running.stats["processed"] == 2, message="both messages processed")
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), message="queue empty")
        assert running.stop() == 0

    stats = running.stats
    assert stats["dropped"] == 1
    assert stats["written"] == 1
    assert stats["failed"] == 0
    documents = list(stored_objects(s3, bucket).values())
    assert [d["message_id"] for d in documents] == [kept_id]
    assert dropped_id not in {d["message_id"] for d in documents}
    assert documents[0]["body"] == "keep me"
