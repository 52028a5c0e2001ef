"""The fault proxy does what the reliability tests rely on, checked with plain boto3 clients."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from helpers.faultproxy import (
    ACCESS_DENIED,
    SLOW_DOWN,
    SQS_INTERNAL_ERROR,
    DelayResponse,
    DropAfterForward,
    DropBeforeForward,
    FailEntries,
    FaultProxy,
)
from helpers.support import REGION, unique


@pytest.fixture
def proxy(emulator: str) -> Iterator[FaultProxy]:
    with FaultProxy(emulator, seed=1) as running:
        yield running


def _client(service: str, proxy: FaultProxy, attempts: int = 1) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": attempts},
                    read_timeout=10)
    return boto3.client(service, region_name=REGION, endpoint_url=proxy.url, config=config)


def test_s3_calls_are_classified_and_errors_are_s3_shaped(aws_env, s3, bucket, proxy):
    client = _client("s3", proxy)
    proxy.add(ACCESS_DENIED, operation="PutObject", key_prefix="denied/")
    client.put_object(Bucket=bucket, Key="ok/a.json", Body=b"{}")
    with pytest.raises(ClientError) as denied:
        client.put_object(Bucket=bucket, Key="denied/b.json", Body=b"{}")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert client.head_object(Bucket=bucket, Key="ok/a.json")["ContentLength"] == 2
    seen = [(r.operation, r.bucket, r.key, r.status) for r in proxy.seen(service="s3")]
    assert seen == [("PutObject", bucket, "ok/a.json", 200),
                    ("PutObject", bucket, "denied/b.json", 403),
                    ("HeadObject", bucket, "ok/a.json", 200)]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["ok/a.json"]


def test_a_put_dropped_after_forwarding_is_stored_and_the_retry_meets_412(
    aws_env, s3, bucket, proxy
):
    client = _client("s3", proxy, attempts=2)
    lost = proxy.add(DropAfterForward(), operation="PutObject", times=1)
    with pytest.raises(ClientError) as retried:
        client.put_object(Bucket=bucket, Key="k.json", Body=b"1", IfNoneMatch="*")
    assert retried.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert lost.fired == 1
    assert s3.get_object(Bucket=bucket, Key="k.json")["Body"].read() == b"1"
    assert [r.status for r in proxy.seen("PutObject")] == [None, 412]


def test_a_request_dropped_before_forwarding_never_reaches_the_server(
    aws_env, s3, bucket, proxy
):
    client = _client("s3", proxy)
    proxy.add(DropBeforeForward(), operation="PutObject")
    with pytest.raises(HTTPClientError):
        client.put_object(Bucket=bucket, Key="never.json", Body=b"1")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_sqs_errors_batch_entry_failures_and_delayed_answers(aws_env, sqs, proxy):
    queue_url = sqs.create_queue(QueueName=unique("q"))["QueueUrl"]
    sqs.send_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": str(i), "MessageBody": f"m{i}"} for i in range(4)])
    client = _client("sqs", proxy, attempts=2)

    proxy.add(SQS_INTERNAL_ERROR, operation="ReceiveMessage", times=2)
    with pytest.raises(ClientError) as failed:
        client.receive_message(QueueUrl=queue_url)
    assert failed.value.response["Error"]["Code"] == "InternalFailure"
    assert proxy.count("ReceiveMessage") == 2  # retried once: a server error

    slow = proxy.add(DelayResponse(1.0), operation="ReceiveMessage", times=1)
    started = time.monotonic()
    messages = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                      VisibilityTimeout=30)["Messages"]
    assert time.monotonic() - started >= 1.0 and slow.fired == 1
    assert len(messages) == 4

    proxy.add(FailEntries("InternalError", select=lambda e: e["Id"] in ("1", "3")),
              operation="DeleteMessageBatch", times=1)
    response = client.delete_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
    assert sorted(e["Id"] for e in response["Successful"]) == ["0", "2"]
    assert sorted((e["Id"], e["Code"], e["SenderFault"]) for e in response["Failed"]) == [
        ("1", "InternalError", False), ("3", "InternalError", False)]
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "2"
    delete = proxy.seen("DeleteMessageBatch")[0]
    assert [e["Id"] for e in delete.params["Entries"]] == ["0", "1", "2", "3"]


def test_probability_skip_and_times_limit_when_a_rule_fires(aws_env, s3, bucket, proxy):
    client = _client("s3", proxy)
    rule = proxy.add(SLOW_DOWN, operation="GetObject", skip=2, times=3, probability=0.5)
    client.put_object(Bucket=bucket, Key="x", Body=b"x")
    outcomes = []
    for _ in range(30):
        try:
            client.get_object(Bucket=bucket, Key="x")
            outcomes.append("ok")
        except ClientError as error:
            assert error.response["Error"]["Code"] == "SlowDown"
            outcomes.append("slow")
    assert outcomes[:2] == ["ok", "ok"]
    assert outcomes.count("slow") == rule.fired == 3
    assert rule.matched == 30
