"""The s3 sink's security options: bucket owner, encryption, tags, metadata, checksum.

The end-to-end tests run the real pipeline against the moto server and read back what S3 stored
(``head_object``, ``get_object_tagging``). What moto does not enforce is checked on the wire
instead: moto accepts any ExpectedBucketOwner and any SSEKMSKeyId, so those tests capture the
request headers the sink's own client sent.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.compat import HAS_CRT
from helpers.faultproxy import FaultProxy
from helpers.support import pipeline_config, stored_objects, unique, wait_for, write_config

from sqs_processor.config import load_config
from sqs_processor.errors import ConfigError
from sqs_processor.loaders import build_plugin_manager
from sqs_processor.pipeline import build_pipeline, close_pipeline

MOTO_ACCOUNT = "123456789012"  # the account moto reports as every bucket's owner
CLIENTS = ("obstore", "boto3")


@pytest.fixture
def proxy(emulator: str) -> Iterator[FaultProxy]:
    """A recording proxy in front of moto: the headers each client really sent."""
    with FaultProxy(emulator) as running:
        yield running


def _config(queue_url: str, bucket: str, proxy: FaultProxy, client: str,
            **sink: Any) -> dict[str, Any]:
    return pipeline_config(queue_url, bucket, aws={"endpoint_url": proxy.url},
                           sink={"client": client, **sink})


def _put_headers(proxy: FaultProxy) -> list[dict[str, str]]:
    return [{k.lower(): v for k, v in r.headers.items()} for r in proxy.seen("PutObject")]


def _signed(headers: dict[str, str]) -> set[str]:
    """The header names the request's SigV4 signature covers."""
    return set(headers["authorization"].split("SignedHeaders=", 1)[1].split(",", 1)[0]
               .split(";"))


def _send(sqs, queue_url: str, count: int) -> list[str]:
    return [sqs.send_message(QueueUrl=queue_url, MessageBody=f'{{"n": {i}}}')["MessageId"]
            for i in range(count)]


@pytest.mark.parametrize("client", CLIENTS)
def test_owner_encryption_tags_metadata_and_checksum_reach_every_stored_object(
        sqs, s3, queue_url, bucket, run_pipeline, proxy, client):
    tags = {"team": "data platform", "path": "a/b=c+d", "owner": "café@example"}
    running = run_pipeline(_config(
        queue_url, bucket, proxy, client, expected_bucket_owner=MOTO_ACCOUNT,
        server_side_encryption="AES256", tags=tags,
        metadata={"source": "sqs-processor", "pipeline-name": "orders.v2"},
        checksum_algorithm="SHA256", content_type="application/vnd.archive+json"))
    ids = _send(sqs, queue_url, 2)
    wait_for(lambda: running.stats["processed"] == 2, message="both messages processed")

    stored = stored_objects(s3, bucket)
    assert sorted(doc["message_id"] for doc in stored.values()) == sorted(ids)
    for key in stored:
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert head["ServerSideEncryption"] == "AES256"
        assert head["ContentType"] == "application/vnd.archive+json"
        assert head["Metadata"] == {"source": "sqs-processor", "pipeline-name": "orders.v2"}
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
        tag_set = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        assert {t["Key"]: t["Value"] for t in tag_set} == tags
    # moto does not check the owner; the header must still be on every put, and signed
    # (S3 refuses x-amz-* headers a signature does not cover).
    headers = _put_headers(proxy)
    assert len(headers) == 2
    assert {h.get("x-amz-expected-bucket-owner") for h in headers} == {MOTO_ACCOUNT}
    assert all({"x-amz-expected-bucket-owner", "x-amz-tagging", "if-none-match"} <= _signed(h)
               for h in headers)


@pytest.mark.parametrize("client", CLIENTS)
def test_sse_kms_sends_the_key_and_bucket_key_setting(sqs, s3, aws_env, queue_url, bucket,
                                                      run_pipeline, proxy, client):
    import boto3

    kms = boto3.client("kms", region_name=aws_env["AWS_REGION"],
                       endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    key_arn = kms.create_key(Description=unique("sink-test"))["KeyMetadata"]["Arn"]
    running = run_pipeline(_config(queue_url, bucket, proxy, client,
                                   server_side_encryption="aws:kms", kms_key_id=key_arn,
                                   bucket_key_enabled=True))
    _send(sqs, queue_url, 1)
    wait_for(lambda: running.stats["processed"] == 1, message="the message processed")

    (key,) = stored_objects(s3, bucket)
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_arn
    assert head["BucketKeyEnabled"] is True
    (headers,) = _put_headers(proxy)
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == key_arn
    assert "x-amz-tagging" not in headers  # nothing that needs s3:PutObjectTagging


@pytest.mark.parametrize("client", CLIENTS)
def test_dsse_kms_and_crc64nvme_are_sent(sqs, queue_url, bucket, run_pipeline, proxy, client):
    if client == "boto3" and not HAS_CRT:
        pytest.skip("boto3 computes CRC64NVME only with botocore[crt], not installed here")
    running = run_pipeline(_config(queue_url, bucket, proxy, client,
                                   server_side_encryption="aws:kms:dsse",
                                   kms_key_id="alias/archive", checksum_algorithm="CRC64NVME"))
    _send(sqs, queue_url, 1)
    wait_for(lambda: proxy.count("PutObject") == 1, message="the put")
    (headers,) = _put_headers(proxy)
    assert headers["x-amz-server-side-encryption"] == "aws:kms:dsse"
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == "alias/archive"
    assert headers.get("x-amz-checksum-crc64nvme")
    assert running.runner.liveness()[0]


@pytest.mark.parametrize("client", CLIENTS)
def test_without_the_new_options_a_put_carries_none_of_their_headers(
        sqs, s3, queue_url, bucket, run_pipeline, proxy, client):
    running = run_pipeline(_config(queue_url, bucket, proxy, client))
    _send(sqs, queue_url, 1)
    wait_for(lambda: running.stats["processed"] == 1, message="the message processed")
    (headers,) = _put_headers(proxy)
    assert headers["if-none-match"] == "*"
    assert headers["content-type"] == "application/json"
    for name in ("x-amz-expected-bucket-owner", "x-amz-server-side-encryption", "x-amz-tagging",
                 "x-amz-checksum-sha256"):
        assert name not in headers
    assert not [h for h in headers if h.startswith("x-amz-meta-")]


@pytest.mark.parametrize("client", CLIENTS)
def test_conditional_write_off_sends_no_precondition(sqs, s3, queue_url, bucket, run_pipeline,
                                                     proxy, client):
    running = run_pipeline(_config(queue_url, bucket, proxy, client, conditional_write=False))
    _send(sqs, queue_url, 1)
    wait_for(lambda: running.stats["processed"] == 1, message="the message processed")
    (headers,) = _put_headers(proxy)
    assert "if-none-match" not in headers
    assert len(stored_objects(s3, bucket)) == 1


# --------------------------------------------------------------------------------------------
# Validation: every bad value is a ConfigError naming the key, before anything connects
# --------------------------------------------------------------------------------------------


def _build(tmp_path: Path, environ: dict[str, str] | None = None, **sink: Any):
    config = pipeline_config("https://sqs.us-east-1.amazonaws.com/123456789012/q",
                             "offline-bucket", sink={"client": "boto3", **sink},
                             aws={"region": "us-east-1"})
    loaded = load_config(write_config(tmp_path, config), environ=environ or {})
    pipeline = build_pipeline(loaded, build_plugin_manager(loaded.plugin_settings))
    close_pipeline(pipeline)
    return pipeline


BAD = [
    ({"expected_bucket_owner": "12345"}, "sink.expected_bucket_owner", "not an AWS account id"),
    ({"expected_bucket_owner": "12345678901\uff12"}, "sink.expected_bucket_owner", "account id"),
    ({"expected_bucket_owner": "123456789012\n"}, "sink.expected_bucket_owner", "account id"),
    ({"server_side_encryption": "aws:kms:foo"}, "sink.server_side_encryption", "not allowed"),
    ({"kms_key_id": "alias/archive"}, "sink.kms_key_id", "without KMS encryption"),
    ({"server_side_encryption": "AES256", "kms_key_id": "alias/archive"}, "sink.kms_key_id",
     "without KMS encryption"),
    ({"server_side_encryption": "aws:kms", "kms_key_id": "my key"}, "sink.kms_key_id",
     "not a KMS key id"),
    ({"server_side_encryption": "AES256", "bucket_key_enabled": True},
     "sink.bucket_key_enabled", "only to SSE-KMS"),
    ({"server_side_encryption": "aws:kms:dsse", "bucket_key_enabled": False},
     "sink.bucket_key_enabled", "only to SSE-KMS"),
    ({"tags": ["team=data"]}, "sink.tags", "wrong type"),
    ({"tags": {f"t{i}": "v" for i in range(11)}}, "sink.tags", "has 11 tags"),
    ({"tags": {"version": 2}}, "sink.tags.version", "wrong type"),
    ({"tags": {"aws:createdBy": "me"}}, "sink.tags", "reserved 'aws:'"),
    ({"tags": {"AWS:x": "me"}}, "sink.tags", "reserved 'aws:'"),
    ({"tags": {"t" * 129: "v"}}, "sink.tags", "tag name S3 rejects"),
    ({"tags": {"": "v"}}, "sink.tags", "not text"),
    ({"tags": {"team": "a#b"}}, "sink.tags.team", "tag value S3 rejects"),
    ({"tags": {"team": "v" * 257}}, "sink.tags.team", "tag value S3 rejects"),
    ({"tags": {"team": "line\nbreak"}}, "sink.tags.team", "tag value S3 rejects"),
    ({"metadata": {"Team": "data"}}, "sink.metadata", "lowercase header name"),
    ({"metadata": {"team name": "data"}}, "sink.metadata", "lowercase header name"),
    ({"metadata": {"owner": "José"}}, "sink.metadata.owner", "printable ASCII"),
    ({"metadata": {"owner": "a\r\nx-amz-acl: public-read"}}, "sink.metadata.owner",
     "printable ASCII"),
    ({"metadata": {"big": "x" * 2046}}, "sink.metadata", "2049 bytes"),
    ({"metadata": {"n": 1}}, "sink.metadata.n", "wrong type"),
    ({"checksum_algorithm": "MD5"}, "sink.checksum_algorithm", "not allowed"),
    ({"checksum_algorithm": "sha256"}, "sink.checksum_algorithm", "not allowed"),
    ({"bucket": "archive\n"}, "sink.bucket", "not a valid S3 bucket name"),
]


@pytest.mark.parametrize(("sink", "key", "problem"), BAD,
                         ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
@pytest.mark.parametrize("client", CLIENTS)
def test_bad_security_option_is_a_config_error_naming_the_key(tmp_path, sink, key, problem,
                                                              client):
    with pytest.raises(ConfigError) as caught:
        _build(tmp_path, **{"client": client, **sink})
    assert caught.value.key == key
    assert problem in str(caught.value)


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "SHA1"])
def test_a_checksum_obstore_cannot_compute_is_refused_naming_the_boto3_client(tmp_path,
                                                                            algorithm):
    with pytest.raises(ConfigError) as caught:
        _build(tmp_path, client="obstore", checksum_algorithm=algorithm)
    assert caught.value.key == "sink.checksum_algorithm"
    assert "not supported by the obstore client" in str(caught.value)
    assert "sink.client: boto3" in str(caught.value)


def test_an_unknown_client_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        _build(tmp_path, client="aws-cli")
    assert caught.value.key == "sink.client"


@pytest.mark.skipif(HAS_CRT, reason="the AWS CRT is installed, so CRC32C is computable")
@pytest.mark.parametrize("algorithm", ["CRC32C", "CRC64NVME"])
def test_a_checksum_that_needs_the_crt_is_rejected_when_it_is_missing(tmp_path, algorithm):
    with pytest.raises(ConfigError) as caught:
        _build(tmp_path, checksum_algorithm=algorithm)
    assert caught.value.key == "sink.checksum_algorithm"
    assert "botocore[crt]" in str(caught.value)


def test_an_option_from_the_environment_names_the_variable(tmp_path):
    with pytest.raises(ConfigError) as caught:
        _build(tmp_path, environ={"BUCKET_OWNER": "not-an-account"},
               expected_bucket_owner="${BUCKET_OWNER}")
    assert caught.value.key == "sink.expected_bucket_owner"
    assert "$BUCKET_OWNER" in str(caught.value)


def test_valid_options_become_exactly_these_put_parameters(tmp_path):
    sink = _build(tmp_path, expected_bucket_owner="210987654321",
                  server_side_encryption="aws:kms",
                  kms_key_id="arn:aws:kms:us-east-1:210987654321:alias/archive",
                  bucket_key_enabled=False, tags={"a b": "c/d", "e": ""},
                  metadata={"x-y": "1 2"}, checksum_algorithm="CRC32").sink
    assert sink.objects.put_options == {
        "ExpectedBucketOwner": "210987654321",
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "arn:aws:kms:us-east-1:210987654321:alias/archive",
        "BucketKeyEnabled": False,
        "Tagging": "a%20b=c%2Fd&e=",
        "Metadata": {"x-y": "1 2"},
        "ChecksumAlgorithm": "CRC32",
    }


def test_the_obstore_client_gets_the_same_settings(tmp_path):
    sink = _build(tmp_path, client="obstore", expected_bucket_owner="210987654321",
                  server_side_encryption="aws:kms",
                  kms_key_id="arn:aws:kms:us-east-1:210987654321:alias/archive",
                  bucket_key_enabled=False, tags={"a b": "c/d", "e": ""},
                  metadata={"x-y": "1 2"}, checksum_algorithm="SHA256").sink
    assert sink.objects.client_name == "obstore"
    assert sink.objects.writer.settings == {
        "expected_bucket_owner": "210987654321",
        "sse": "aws:kms",
        "kms_key_id": "arn:aws:kms:us-east-1:210987654321:alias/archive",
        "bucket_key_enabled": False,
        "tags": (("a b", "c/d"), ("e", "")),
        "metadata": (("x-y", "1 2"),),
        "checksum": "SHA256",
    }


def test_an_empty_bucket_owner_means_not_checked(tmp_path):
    sink = _build(tmp_path, environ={}, expected_bucket_owner="${BUCKET_OWNER:-}").sink
    assert sink.objects.put_options == {}
