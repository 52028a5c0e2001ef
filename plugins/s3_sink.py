"""The ``s3`` sink: one JSON object per message at ``<prefix>YYYY/MM/DD/HH/<message-id>.json``.

The hour is the UTC hour of the message's ``SentTimestamp`` by default, not this consumer's
clock, so a redelivered message maps to the same key however late it comes back. The put is
conditional (``If-None-Match: *``): when the object already exists S3 answers 412, which means an
earlier delivery was stored, and counts as success. The key is built only from the configured
prefix, the timestamp and the SQS-assigned message id, never from the body or attributes.

The security options map onto PutObject parameters and are checked before anything connects:
``expected_bucket_owner`` (ExpectedBucketOwner: S3 answers 403 if another account owns the
bucket), ``server_side_encryption`` with ``kms_key_id`` and ``bucket_key_enabled`` (SSE-S3,
SSE-KMS or DSSE-KMS), ``tags`` (the Tagging query string; needs ``s3:PutObjectTagging``),
``metadata`` (``x-amz-meta-*`` headers) and ``checksum_algorithm`` (S3 verifies the body against
it and keeps it with the object).

The call is made by one of two clients (``client``): obstore by default, through the writer the
AWS clients hand out (``context.aws.object_store``: boto3's credentials and endpoint, botocore's
exceptions), or boto3's ``put_object``. Both raise botocore's exceptions, so "already exists",
a system failure and a message's own failure mean the same whichever client made the call.
Options obstore cannot honour are refused when the pipeline is built, naming ``client: boto3``.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from botocore.exceptions import ClientError

from sqs_processor import (
    REQUIRED,
    BatchedSink,
    BatchPolicy,
    BuildContext,
    HealthCheckSpec,
    LastCallCheck,
    Message,
    MessageError,
    Option,
    Record,
    Sink,
    SinkSpec,
    WriteResult,
    error_code,
    hookimpl,
    validate_options,
)
from sqs_processor.plugins.s3_options import (
    CHECKSUM_CHOICES,
    SSE_CHOICES,
    check_bucket,
    check_checksum,
    check_prefix,
    obstore_settings,
    put_parameters,
)
from sqs_processor.plugins.s3_options import (
    MAX_PREFIX_BYTES as MAX_PREFIX_BYTES,  # re-exported: the example router uses it
)

OPTIONS = (
    Option("bucket", str, REQUIRED, "Name of the S3 bucket to write to."),
    Option("client", str, "obstore",
           "S3 client that makes the PutObject call: obstore (native, about a third of boto3's "
           "CPU per put) or boto3; both use boto3's credentials and endpoint settings.",
           choices=("obstore", "boto3")),
    Option("prefix", str, "sqs-messages/",
           "Key prefix before the date folders; empty, or ending in '/'."),
    Option("partition_time", str, "sent",
           "Which time picks the hour folder: 'sent' (SQS SentTimestamp) or 'received'.",
           choices=("sent", "received")),
    Option("content_type", str, "application/json", "Content-Type of every object."),
    Option("conditional_write", bool, True,
           "Put with If-None-Match: * so a redelivery never overwrites (turn off only for "
           "S3-compatible stores that reject the header)."),
    Option("expected_bucket_owner", str, None,
           "12-digit account id that must own the bucket (ExpectedBucketOwner); empty or "
           "unset: not checked."),
    Option("server_side_encryption", str, None,
           "Encryption of every object: AES256 (SSE-S3), aws:kms (SSE-KMS) or aws:kms:dsse "
           "(DSSE-KMS); unset: the bucket's default encryption.",
           choices=SSE_CHOICES),
    Option("kms_key_id", str, None,
           "KMS key for aws:kms or aws:kms:dsse (key id, key ARN, alias/name or alias ARN); "
           "unset: the AWS managed key aws/s3."),
    Option("bucket_key_enabled", bool, None,
           "Use an S3 Bucket Key with aws:kms (fewer KMS requests); unset: the bucket's "
           "setting."),
    Option("tags", dict, None,
           "Object tags, name: value (at most 10; needs s3:PutObjectTagging)."),
    Option("metadata", dict, None,
           "User metadata stored as x-amz-meta-<name> headers, name: value (lowercase names, "
           "ASCII values, 2 KB in all)."),
    Option("checksum_algorithm", str, None,
           "Checksum S3 verifies and stores with each object. obstore: SHA256 or CRC64NVME; "
           "boto3: all five (CRC32C and CRC64NVME need botocore[crt]). Unset: the client's "
           "default.",
           choices=CHECKSUM_CHOICES),
    Option("batch", dict, None,
           "Batched mode: many messages per NDJSON object. Keys: max_records (500), max_bytes "
           "(8 MiB), max_age_seconds (10), compression (none or gzip). Unset: one object per "
           "message."),
)

BATCH_OPTIONS = (
    Option("max_records", int, 500, "Records per object, at most.", minimum=1, maximum=100_000),
    Option("max_bytes", int, 8 * 1024 * 1024, "Bytes per object (before compression), at most.",
           minimum=1024, maximum=1024 ** 3),
    Option("max_age_seconds", float, 10.0, "Longest wait of a batch's first record.",
           minimum=0.05, maximum=3600),
    Option("compression", str, "none", "none, or gzip (Content-Encoding: gzip).",
           choices=("none", "gzip")),
)
"""The keys of the ``batch`` option (the one place their defaults are written)."""

_MESSAGE_ID = re.compile(r"\A[A-Za-z0-9_:.-]{1,128}\Z")


class Boto3Writer:
    """Puts objects with boto3's ``put_object``; ``params`` are the PutObject parameters the
    sink's options add (the same on every put)."""

    def __init__(self, client: Any, bucket: str, params: Mapping[str, Any]) -> None:
        self.client = client
        self.bucket = bucket
        self.params = dict(params)

    def put(self, key: str, body: bytes, content_type: str, *, create: bool,
            content_encoding: str | None = None) -> bool:
        """True if the object was created; False if ``create`` found it already there (412)."""
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if create else {}
        if content_encoding:
            extra["ContentEncoding"] = content_encoding
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                   ContentType=content_type, **extra, **self.params)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412 or error_code(exc) == "PreconditionFailed":
                return False
            raise
        return True


class S3Objects:
    """Puts objects into one bucket: keys, the conditional put, and the outcome of each call
    (for the ``s3_write`` readiness check). Shared by both sinks below; thread-safe.

    ``writer`` makes the call (:class:`Boto3Writer`, or the obstore writer the AWS clients
    hand out); both raise botocore's exceptions, so a failure means the same whichever it is.
    """

    def __init__(self, writer: Any, options: Mapping[str, Any],
                 put_options: Mapping[str, Any]) -> None:
        self.writer = writer
        self.client_name: str = options["client"]
        self.bucket: str = options["bucket"]
        self.prefix: str = options["prefix"]
        self.use_sent_time = options["partition_time"] == "sent"
        self.content_type: str = options["content_type"]
        self.create: bool = options["conditional_write"]
        # ExpectedBucketOwner, encryption, tags, metadata, checksum: the same on every put.
        self.put_options: dict[str, Any] = dict(put_options)
        self.check = LastCallCheck(f"write to bucket {self.bucket}")

    def folder_for(self, record: Record) -> str:
        """``<prefix>YYYY/MM/DD/HH/``: the hour of SentTimestamp (or of the receive)."""
        message = record.message
        when: datetime = (message.sent_at if self.use_sent_time else None) or message.received_at
        return f"{self.prefix}{when:%Y/%m/%d/%H}/"

    def put(self, key: str, body: bytes, content_type: str,
            content_encoding: str | None = None) -> WriteResult:
        location = f"s3://{self.bucket}/{key}"
        try:
            created = self.writer.put(key, body, content_type, create=self.create,
                                      content_encoding=content_encoding)
        except ClientError as exc:
            if error_code(exc) != "ConditionalRequestConflict":  # a concurrent write, not an outage
                self.check.failed(exc)
            raise
        except Exception as exc:
            self.check.failed(exc)
            raise
        self.check.succeeded()
        return WriteResult(location=location, created=created)


def encode(record: Record) -> bytes:
    """The stored JSON document; a record JSON cannot hold is that message's failure."""
    try:
        return orjson.dumps(record.document)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise MessageError(f"document cannot be encoded as JSON: {exc}") from None


class S3Sink(Sink):
    """Writes each record as its own object, ``<prefix>YYYY/MM/DD/HH/<message-id>.json``."""

    def __init__(self, writer: Any, options: Mapping[str, Any],
                 put_options: Mapping[str, Any] | None = None) -> None:
        self.objects = S3Objects(writer, options, put_options or {})
        self.prefix = self.objects.prefix
        self.check = self.objects.check

    def key_for(self, record: Record) -> str:
        message_id = record.message.message_id
        if not _MESSAGE_ID.match(message_id) or message_id in (".", ".."):
            raise MessageError(f"message id {message_id!r} cannot be used in an S3 key")
        return f"{self.objects.folder_for(record)}{message_id}.json"

    def write(self, record: Record) -> WriteResult:
        key = self.key_for(record)
        return self.objects.put(key, encode(record), self.objects.content_type)


class BatchedS3Sink(BatchedSink):
    """Writes batches as NDJSON objects (optionally gzip) per hour folder:
    ``<prefix>YYYY/MM/DD/HH/<first-message-id>-<count>.ndjson[.gz]``."""

    def __init__(self, writer: Any, options: Mapping[str, Any], put_options: Mapping[str, Any],
                 policy: BatchPolicy, gzip: bool) -> None:
        super().__init__(policy)
        self.objects = S3Objects(writer, options, put_options)
        self.check = self.objects.check
        self.gzip = gzip

    def batch_key(self, record: Record) -> str:
        """The hour folder a record's batch goes to (same time rule as single objects)."""
        return self.objects.folder_for(record)

    def encode(self, record: Record) -> bytes:
        """One NDJSON line: the same document a single object would hold."""
        return encode(record) + b"\n"

    def write_batch(self, key: str, lines: Sequence[bytes],
                    messages: Sequence[Message]) -> WriteResult:
        """One object for the batch, named after its first message id and its size, so writing
        the same batch again meets the conditional put instead of making a copy."""
        body = b"".join(lines)
        name = f"{key}{messages[0].message_id}-{len(lines)}.ndjson"
        if self.gzip:
            body = gzip.compress(body, compresslevel=6, mtime=0)
            name += ".gz"
        return self.objects.put(name, body, "application/x-ndjson",
                                "gzip" if self.gzip else None)


def writer_for(options: Mapping[str, Any], put_options: Mapping[str, Any],
               context: BuildContext) -> Any:
    """The writer of the ``client`` option: obstore's (from the AWS clients) or boto3's."""
    if options["client"] == "obstore":
        return context.aws.object_store(
            options["bucket"], obstore_settings(options, put_options, context.where))
    check_checksum(options["checksum_algorithm"], f"{context.where}.checksum_algorithm")
    return Boto3Writer(context.aws.client("s3"), options["bucket"], put_options)


def build(options: Mapping[str, Any], context: BuildContext) -> S3Sink | BatchedS3Sink:
    check_bucket(options["bucket"], f"{context.where}.bucket")
    check_prefix(options["prefix"], f"{context.where}.prefix")
    put_options = put_parameters(options, context.where)
    writer = writer_for(options, put_options, context)
    if options["batch"] is None:
        return S3Sink(writer, options, put_options)
    batch = validate_options(BATCH_OPTIONS, options["batch"], f"{context.where}.batch")
    policy = BatchPolicy(max_records=batch["max_records"], max_bytes=batch["max_bytes"],
                         max_age=batch["max_age_seconds"])
    return BatchedS3Sink(writer, options, put_options, policy, batch["compression"] == "gzip")


@hookimpl
def sqs_processor_sinks():
    return SinkSpec(
        name="s3",
        factory=build,
        description="One JSON object per message at <prefix>YYYY/MM/DD/HH/<message-id>.json.",
        options=OPTIONS,
    )


@hookimpl
def sqs_processor_health_checks(pipeline):
    if isinstance(pipeline.sink, S3Sink | BatchedS3Sink):
        return HealthCheckSpec(name="s3_write", check=pipeline.sink.check,
                               description="The last write to the bucket did not fail.")
    return None
