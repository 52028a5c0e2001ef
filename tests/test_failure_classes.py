"""Failure classes, the error sink and the visibility heartbeat, against the moto server."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from helpers.support import (
    dropin_folder,
    pipeline_config,
    queue_counts,
    stored_objects,
    unique,
    wait_for,
    write_config,
)

from sqs_processor.config import load_config
from sqs_processor.errors import ConfigError, MessageError, SystemFailure, is_system_failure
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.pipeline import build_pipeline

FLAKY = '''
import time
from sqs_processor import TransformSpec, hookimpl


def step(record):
    if "poison" in record.message.body:
        raise ValueError("cannot handle " + record.message.message_id)
    if "slow" in record.message.body:
        time.sleep(4.5)
    return record


@hookimpl
def sqs_processor_transforms():
    return [TransformSpec("flaky", lambda options, context: step, "Fails or dawdles on cue.")]
'''


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(("error", "system"), [
    (_client_error("AccessDenied", 403), True),
    (_client_error("NoSuchBucket", 404), True),
    (_client_error("SlowDown", 503), True),
    (_client_error("InternalError", 500), True),
    (_client_error("SomethingNew", 502), True),
    (_client_error("InvalidArgument", 400), False),
    (_client_error("EntityTooLarge", 400), False),
    (EndpointConnectionError(endpoint_url="http://x"), True),
    (ReadTimeoutError(endpoint_url="http://x"), True),
    (SystemFailure("disk full"), True),
    (MessageError("bad document"), False),
    (TypeError("Type is not JSON serializable: set"), False),
    (ValueError("nope"), False),
])
def test_failures_are_classified(error, system):
    assert is_system_failure(error) is system


def test_poison_messages_reach_the_error_sink_after_the_receive_limit(tmp_path, sqs, s3, bucket,
                                                                      run_pipeline):
    queue_url = sqs.create_queue(QueueName=unique("q"),
                                 Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    folder = dropin_folder(tmp_path, flaky=FLAKY)
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(folder)]},
                             transforms=["json_parse", "flaky", "enrich"],
                             errors={"after_receives": 3, "sink": "s3", "prefix": "errors/"})
    good = [sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"n": i}))["MessageId"]
            for i in range(4)]
    poison_body = 'poison \u202e\x1b[31m {"n": 1}'
    poison = sqs.send_message(QueueUrl=queue_url, MessageBody=poison_body)["MessageId"]

    with run_pipeline(config) as running:
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=30,
                 message="every message to leave the queue")
        stats = running.stats
        assert stats["failed"] == 3  # receives 1, 2 and 3 failed; the third went to the sink
        assert stats["processed"] == 5

    objects = stored_objects(s3, bucket)
    archived = {k: v for k, v in objects.items() if k.startswith("archive/")}
    errors = {k: v for k, v in objects.items() if k.startswith("errors/")}
    assert {doc["message_id"] for doc in archived.values()} == set(good)
    [(key, error)] = errors.items()
    assert key.endswith(f"/{poison}.json")
    assert error["message_id"] == poison
    assert error["body"] == poison_body
    assert error["stage"] == "transform:flaky"
    assert error["error"]["type"] == "ValueError"
    assert poison in error["error"]["message"]
    assert error["receive_count"] == 3
    assert error["attributes"]["ApproximateReceiveCount"] == "3"


def test_without_an_error_sink_poison_stays_for_the_redrive_policy(tmp_path, sqs, s3, bucket,
                                                                   run_pipeline):
    dlq_url = sqs.create_queue(QueueName=unique("dlq"))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName=unique("q"), Attributes={
        "VisibilityTimeout": "1",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
    })["QueueUrl"]
    folder = dropin_folder(tmp_path, flaky=FLAKY)
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(folder)]},
                             transforms=["flaky"])
    poison = sqs.send_message(QueueUrl=queue_url, MessageBody="poison")["MessageId"]
    fine = sqs.send_message(QueueUrl=queue_url, MessageBody="fine")["MessageId"]
    with run_pipeline(config) as running:
        wait_for(lambda: queue_counts(sqs, dlq_url)[0] == 1, timeout=30,
                 message="the poison message in the DLQ")
        wait_for(lambda: running.stats["processed"] == 1)
    moved = sqs.receive_message(QueueUrl=dlq_url)["Messages"]
    assert [m["MessageId"] for m in moved] == [poison]
    assert [d["message_id"] for d in stored_objects(s3, bucket).values()] == [fine]


def test_heartbeat_keeps_slow_work_to_one_delivery(tmp_path, sqs, s3, bucket, run_pipeline):
    queue_url = sqs.create_queue(QueueName=unique("q"),
                                 Attributes={"VisibilityTimeout": "2"})["QueueUrl"]
    folder = dropin_folder(tmp_path, flaky=FLAKY)
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(folder)]},
                             transforms=["flaky", "enrich"])
    ids = [sqs.send_message(QueueUrl=queue_url, MessageBody=f"slow {i}")["MessageId"]
           for i in range(3)]
    with run_pipeline(config) as running:
        wait_for(lambda: running.stats["processed"] == 3, timeout=30)
        time.sleep(1.5)  # a redelivery would show up now
        stats = running.stats
    assert stats["received"] == 3  # 4.5 s of work against a 2 s visibility timeout
    assert stats["existing"] == 0
    documents = stored_objects(s3, bucket).values()
    assert sorted(d["message_id"] for d in documents) == sorted(ids)
    assert all(d["attributes"]["ApproximateReceiveCount"] == "1" for d in documents)
    text = running.runner.telemetry.prometheus_text()
    # The series exists from start-up at 0; the heartbeat must have moved it.
    assert re.search(r'^sqs_processor_visibility_extensions_total\{outcome="ok"\} [1-9]', text,
                     flags=re.M), text


def test_heartbeat_off_lets_slow_work_be_redelivered_but_still_stores_once(
        tmp_path, sqs, s3, bucket, run_pipeline):
    queue_url = sqs.create_queue(QueueName=unique("q"),
                                 Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    folder = dropin_folder(tmp_path, flaky=FLAKY)
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(folder)]},
                             transforms=["flaky"], service={"heartbeat": False})
    sent = sqs.send_message(QueueUrl=queue_url, MessageBody="slow")["MessageId"]
    with run_pipeline(config) as running:
        wait_for(lambda: running.stats["received"] >= 2, timeout=20,
                 message="a second delivery while the first is still being processed")
        wait_for(lambda: queue_counts(sqs, queue_url) == (0, 0), timeout=30)
    assert [d["message_id"] for d in stored_objects(s3, bucket).values()] == [sent]


def _load(tmp_path: Path, config: dict) -> None:
    loaded = load_config(write_config(tmp_path, config))
    build_pipeline(loaded, build_plugin_manager(loaded.plugin_settings))


def test_error_sink_config_errors(tmp_path, aws_env):
    queue = "https://sqs.us-east-1.amazonaws.com/123456789012/q"
    with pytest.raises(ConfigError, match=r"errors\.prefix.*main sink's prefix"):
        _load(tmp_path, pipeline_config(queue, "bucket-b", errors={"sink": "s3",
                                                            "prefix": "archive/"}))
    with pytest.raises(ConfigError, match="did you mean 's3'"):
        _load(tmp_path, pipeline_config(queue, "bucket-b", errors={"sink": "s4"}))
    with pytest.raises(ConfigError, match=r"errors\.after_receives"):
        _load(tmp_path, pipeline_config(queue, "bucket-b", errors={"after_receives": -1}))
    with pytest.raises(ConfigError, match=r"errors\.sink\.prefix"):
        _load(tmp_path, pipeline_config(queue, "bucket-b", errors={"sink": "s3", "prefix": "/bad"}))
    _load(tmp_path, pipeline_config(queue, "bucket-b", errors={"sink": "s3", "after_receives": 5}))
