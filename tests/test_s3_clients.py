"""The s3 sink's two clients, obstore (the default) and boto3, fail and succeed the same way.

Each case builds the shipped sink for one client, points it at a recording proxy in front of
the moto server, and writes one record over real HTTP while the proxy answers as S3 would (an
error document with a status, a dropped connection, a slow answer). The failure must fall in
the same class for both clients: "already exists" is stored; 403, AccessDenied, NoSuchBucket,
5xx, throttling, timeouts and connection errors are the system's; the rest the message's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers.faultproxy import (
    ACCESS_DENIED,
    S3_INTERNAL_ERROR,
    SLOW_DOWN,
    Delay,
    DropBeforeForward,
    Error,
    FaultProxy,
)
from helpers.support import pipeline_config, unique, write_config

from sqs_processor.config import load_config
from sqs_processor.errors import error_code, is_system_failure
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.message import Message, Record
from sqs_processor.pipeline import build_pipeline, close_pipeline
from sqs_processor.plugins.s3_sink import encode

CLIENTS = ("obstore", "boto3")


@pytest.fixture
def proxy(emulator: str) -> Iterator[FaultProxy]:
    with FaultProxy(emulator) as running:
        yield running


def _sink(tmp_path: Path, proxy: FaultProxy, bucket: str, client: str, **aws: Any) -> Any:
    config = pipeline_config("http://127.0.0.1:1/123456789012/unused", bucket,
                             aws={"endpoint_url": proxy.url, "max_attempts": 1,
                                  "read_timeout": 2, **aws},
                             sink={"client": client},
                             source={"wait_time_seconds": 0})
    loaded = load_config(write_config(tmp_path, config, f"{unique('p')}.yaml"))
    pipeline = build_pipeline(loaded, build_plugin_manager(loaded.plugin_settings))
    pipeline.aws.connect()
    return pipeline


def _record(message_id: str | None = None) -> Record:
    message = Message(message_id=message_id or unique("m"), receipt_handle="rh", body="{}",
                      received_at=datetime.now(UTC),
                      attributes={"SentTimestamp": str(int(time.time() * 1000))})
    return Record(message, {"message_id": message.message_id, "body": "{}"})


@pytest.mark.parametrize("client", CLIENTS)
def test_a_second_create_of_the_same_key_counts_as_already_stored(tmp_path, aws_env, bucket,
                                                                  proxy, client):
    pipeline = _sink(tmp_path, proxy, bucket, client)
    try:
        record = _record()
        first = pipeline.sink.write(record)
        again = pipeline.sink.write(record)
    finally:
        close_pipeline(pipeline)
    assert first.created is True and again.created is False
    assert first.location == again.location
    assert [r.status for r in proxy.seen("PutObject")] == [200, 412]
    assert pipeline.sink.check().ok


FAILURES = [
    (ACCESS_DENIED, "AccessDenied", True),
    (Error(403, "SignatureDoesNotMatch", "bad signature"), "SignatureDoesNotMatch", True),
    (Error(404, "NoSuchBucket", "The specified bucket does not exist"), "NoSuchBucket", True),
    (S3_INTERNAL_ERROR, "InternalError", True),
    (SLOW_DOWN, "SlowDown", True),
    (Error(502, "BadGateway", "upstream"), "BadGateway", True),
    (Error(400, "InvalidArgument", "bad header"), "InvalidArgument", False),
    (Error(400, "EntityTooLarge", "too big"), "EntityTooLarge", False),
    (DropBeforeForward(), "EndpointConnectionError", True),
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("action", "code", "system"), FAILURES,
                         ids=[f[1] for f in FAILURES])
def test_a_failed_put_is_classified_the_same_for_both_clients(tmp_path, aws_env, bucket, proxy,
                                                              client, action, code, system):
    proxy.add(action, operation="PutObject")
    pipeline = _sink(tmp_path, proxy, bucket, client)
    try:
        with pytest.raises(Exception) as caught:
            pipeline.sink.write(_record())
    finally:
        close_pipeline(pipeline)
    if isinstance(action, DropBeforeForward):
        # botocore names a dropped connection by where it broke; both are connection errors.
        assert error_code(caught.value) in ("EndpointConnectionError", "ConnectionClosedError")
    else:
        assert error_code(caught.value) == code
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == action.status
    assert is_system_failure(caught.value) is system
    assert not pipeline.sink.check().ok  # readiness sees the failed write


@pytest.mark.parametrize("client", CLIENTS)
def test_a_put_that_outlasts_the_read_timeout_is_a_system_failure(tmp_path, aws_env, bucket,
                                                                   proxy, client):
    proxy.add(Delay(5), operation="PutObject")
    pipeline = _sink(tmp_path, proxy, bucket, client, read_timeout=1)
    try:
        with pytest.raises(Exception) as caught:
            pipeline.sink.write(_record())
    finally:
        close_pipeline(pipeline)
    assert is_system_failure(caught.value), repr(caught.value)
    assert "Timeout" in type(caught.value).__name__ or "timeout" in str(caught.value).lower()


@pytest.mark.parametrize("client", CLIENTS)
def test_both_clients_retry_a_server_error_up_to_max_attempts(tmp_path, aws_env, bucket, proxy,
                                                              client):
    proxy.add(S3_INTERNAL_ERROR, operation="PutObject", times=2)
    pipeline = _sink(tmp_path, proxy, bucket, client, max_attempts=3)
    try:
        result = pipeline.sink.write(_record())
    finally:
        close_pipeline(pipeline)
    assert result.created is True
    assert [r.status for r in proxy.seen("PutObject")] == [500, 500, 200]


@pytest.mark.parametrize("client", CLIENTS)
def test_both_clients_write_the_same_bytes(tmp_path, aws_env, s3, bucket, proxy, client):
    pipeline = _sink(tmp_path, proxy, bucket, client)
    record = _record()
    try:
        result = pipeline.sink.write(record)
    finally:
        close_pipeline(pipeline)
    key = result.location.split("/", 3)[3]
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == encode(record)


@pytest.mark.parametrize("client", CLIENTS)
def test_credentials_and_the_s3_endpoint_come_from_boto3s_chain(tmp_path, aws_env, bucket,
                                                                proxy, monkeypatch, client):
    """A profile's keys (no AWS_* keys set) and AWS_ENDPOINT_URL_S3 reach the put, as boto3's
    chain resolves them, whichever client makes it."""
    credentials = tmp_path / "credentials"
    credentials.write_text("[archiver]\naws_access_key_id = AKIDPROFILEKEY\n"
                           "aws_secret_access_key = profile-secret\n", encoding="utf-8")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_PROFILE", "archiver")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # SQS stays on AWS_ENDPOINT_URL
    config = pipeline_config("http://127.0.0.1:1/123456789012/unused", bucket,
                             source={"wait_time_seconds": 0}, sink={"client": client})
    loaded = load_config(write_config(tmp_path, config))
    pipeline = build_pipeline(loaded, build_plugin_manager(loaded.plugin_settings))
    try:
        pipeline.aws.connect()
        assert pipeline.sink.write(_record()).created
    finally:
        close_pipeline(pipeline)
    (put,) = proxy.seen("PutObject")
    authorization = {k.lower(): v for k, v in put.headers.items()}["authorization"]
    assert "Credential=AKIDPROFILEKEY/" in authorization
