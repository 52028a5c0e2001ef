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
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import botocore.session
import orjson
from botocore.compat import HAS_CRT
from botocore.exceptions import ClientError

from sqs_processor import (
    CONTROL_CHARACTERS,
    REQUIRED,
    BatchedSink,
    BatchPolicy,
    BuildContext,
    ConfigError,
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

SSE_CHOICES = ("AES256", "aws:kms", "aws:kms:dsse")
CHECKSUM_CHOICES = ("CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME")
# Checksums botocore computes only with the AWS CRT installed (botocore[crt]).
CRT_CHECKSUMS = ("CRC32C", "CRC64NVME")

OBSTORE_CHECKSUMS = ("SHA256", "CRC64NVME")  # what obstore computes; boto3 has all five

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

# \Z, not $: "$" also matches before a trailing line break.
_BUCKET = re.compile(r"\A[a-zA-Z0-9][a-zA-Z0-9._-]{1,253}[a-zA-Z0-9]\Z")
_MESSAGE_ID = re.compile(r"\A[A-Za-z0-9_:.-]{1,128}\Z")
# A key is at most 1024 bytes; the date folders, a 128-character id and ".json" need 147.
MAX_PREFIX_BYTES = 1024 - 147


def check_bucket(bucket: str, key: str) -> None:
    if bucket.startswith("s3://"):
        raise ConfigError(key, "is a URL, not a bucket name", value=bucket,
                          expected="the bare bucket name, without s3://")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(key, "is not a valid S3 bucket name", value=bucket,
                          expected="3-255 letters, digits, '.', '-' or '_', starting and ending "
                                   "with a letter or digit")


def check_prefix(prefix: str, key: str) -> None:
    """Reject a prefix that would make keys S3 rejects or that people misread."""
    if not prefix:
        return
    problems = (
        (prefix.startswith("/"), "starts with '/'",),
        (not prefix.endswith("/"), "does not end with '/'"),
        ("//" in prefix, "has an empty folder ('//')"),
        (any(part in (".", "..") for part in prefix.split("/")), "has a '.' or '..' folder"),
        (CONTROL_CHARACTERS.search(prefix) is not None, "contains control characters"),
    )
    for failed, problem in problems:
        if failed:
            raise ConfigError(key, problem, value=prefix,
                              expected="an empty prefix or folders ending in '/', "
                                       "e.g. 'sqs-messages/'")
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigError(key, "is not valid Unicode text", value=prefix,
                          expected="UTF-8 text") from None
    if size > MAX_PREFIX_BYTES:
        raise ConfigError(key, f"is {size} bytes long", value=prefix,
                          expected=f"at most {MAX_PREFIX_BYTES} bytes")


_ACCOUNT_ID = re.compile(r"\A[0-9]{12}\Z")
_KMS_KEY = re.compile(
    r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # key id
    r"|mrk-[0-9a-f]{32}"  # multi-Region key id
    r"|alias/[A-Za-z0-9/_-]{1,250}"  # alias name
    r"|arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(?:key/[A-Za-z0-9-]+|alias/[A-Za-z0-9/_-]{1,250}))\Z"
)
# S3 object tags: at most 10; keys 1-128 and values 0-256 characters of letters, digits, spaces
# and + - = . _ : / @; keys may not start with "aws:".
MAX_TAGS = 10
_TAG_TEXT = re.compile(r"\A[\w +\-=.:/@]*\Z")
# User metadata travels as x-amz-meta-<name> headers; S3 lowercases names and allows 2 KB in all.
MAX_METADATA_BYTES = 2048
_METADATA_NAME = re.compile(r"\A[a-z0-9][a-z0-9_.-]*\Z")
_METADATA_VALUE = re.compile(r"\A[\x20-\x7e]*\Z")


def _text_entries(raw: Mapping[Any, Any], key: str, what: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a tags/metadata mapping; both must be text."""
    entries = []
    for name, value in raw.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(key, f"has a {what} name that is not text", value=name,
                              expected="a non-empty string")
        if not isinstance(value, str):
            raise ConfigError(f"{key}.{name}", "has the wrong type", value=value,
                              expected="a string (quote numbers and booleans, e.g. '2')")
        entries.append((name, value))
    return entries


def check_tags(raw: Mapping[Any, Any] | None, key: str) -> str | None:
    """Validate object tags against S3's limits; return the URL-encoded Tagging value."""
    if not raw:
        return None
    entries = _text_entries(raw, key, "tag")
    if len(entries) > MAX_TAGS:
        raise ConfigError(key, f"has {len(entries)} tags", expected=f"at most {MAX_TAGS}")
    for name, value in entries:
        if len(name) > 128 or not _TAG_TEXT.match(name):
            raise ConfigError(key, "has a tag name S3 rejects", value=name,
                              expected="1-128 letters, digits, spaces or + - = . _ : / @")
        if name.lower().startswith("aws:"):
            raise ConfigError(key, "has a tag name in the reserved 'aws:' namespace", value=name,
                              expected="a name that does not start with 'aws:'")
        if len(value) > 256 or not _TAG_TEXT.match(value):
            raise ConfigError(f"{key}.{name}", "is a tag value S3 rejects", value=value,
                              expected="0-256 letters, digits, spaces or + - = . _ : / @")
    return "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in entries)


def check_metadata(raw: Mapping[Any, Any] | None, key: str) -> dict[str, str] | None:
    """Validate user metadata (header-safe names and values, 2 KB in all)."""
    if not raw:
        return None
    entries = _text_entries(raw, key, "metadata")
    for name, value in entries:
        if not _METADATA_NAME.match(name):
            raise ConfigError(key, "has a metadata name that is not a lowercase header name",
                              value=name, expected="lowercase letters, digits, '-', '_' or '.', "
                                                   "starting with a letter or digit")
        if not _METADATA_VALUE.match(value):
            raise ConfigError(f"{key}.{name}", "is not printable ASCII text", value=value,
                              expected="characters from ' ' to '~' (no line breaks, no "
                                       "non-ASCII)")
    size = sum(len(name) + len(value) for name, value in entries)
    if size > MAX_METADATA_BYTES:
        raise ConfigError(key, f"is {size} bytes of names and values",
                          expected=f"at most {MAX_METADATA_BYTES} bytes")
    return dict(entries)


def check_encryption(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The PutObject encryption parameters for the SSE options, or a ConfigError."""
    sse, key_id, bucket_key = (options["server_side_encryption"], options["kms_key_id"],
                               options["bucket_key_enabled"])
    params: dict[str, Any] = {}
    if sse is not None:
        params["ServerSideEncryption"] = sse
    if key_id is not None:
        if sse not in ("aws:kms", "aws:kms:dsse"):
            raise ConfigError(f"{where}.kms_key_id", "is set without KMS encryption",
                              value=key_id, expected=f"{where}.server_side_encryption: aws:kms "
                                                     "or aws:kms:dsse")
        if not _KMS_KEY.match(key_id):
            raise ConfigError(f"{where}.kms_key_id", "is not a KMS key id, key ARN or alias",
                              value=key_id,
                              expected="e.g. arn:aws:kms:us-west-1:123456789012:key/<key-id> "
                                       "or alias/<name>")
        params["SSEKMSKeyId"] = key_id
    if bucket_key is not None:
        if sse != "aws:kms":
            raise ConfigError(f"{where}.bucket_key_enabled",
                              "applies only to SSE-KMS (S3 Bucket Keys do not exist for "
                              "SSE-S3 or DSSE-KMS)", value=bucket_key,
                              expected=f"{where}.server_side_encryption: aws:kms, or leave "
                                       "bucket_key_enabled unset")
        params["BucketKeyEnabled"] = bucket_key
    return params


def check_checksum(algorithm: str | None, key: str) -> None:
    """Reject a checksum this botocore cannot compute, before any message depends on it."""
    if algorithm is None:
        return
    if algorithm in CRT_CHECKSUMS and not HAS_CRT:
        raise ConfigError(key, f"{algorithm} needs the AWS CRT, which is not installed",
                          value=algorithm,
                          expected="pip install 'botocore[crt]', or CRC32, SHA1 or SHA256")
    model = botocore.session.get_session().get_service_model("s3")  # read from disk only
    supported = model.shape_for("ChecksumAlgorithm").enum
    if algorithm not in supported:
        raise ConfigError(key, f"{algorithm} is not supported by this botocore",
                          value=algorithm, expected="a newer boto3, or one of "
                                                    + ", ".join(supported))


def put_parameters(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every PutObject parameter the sink's options add, validated."""
    params: dict[str, Any] = {}
    owner = options["expected_bucket_owner"]
    if owner:  # empty means "not checked", so an unset ${VAR:-} works
        if not _ACCOUNT_ID.match(owner):
            raise ConfigError(f"{where}.expected_bucket_owner", "is not an AWS account id",
                              value=owner, expected="12 digits, e.g. 123456789012")
        params["ExpectedBucketOwner"] = owner
    params.update(check_encryption(options, where))
    tagging = check_tags(options["tags"], f"{where}.tags")
    if tagging:
        params["Tagging"] = tagging
    metadata = check_metadata(options["metadata"], f"{where}.metadata")
    if metadata:
        params["Metadata"] = metadata
    if options["checksum_algorithm"]:
        params["ChecksumAlgorithm"] = options["checksum_algorithm"]
    return params


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


def obstore_settings(options: Mapping[str, Any], params: Mapping[str, Any],
                     where: str) -> dict[str, Any]:
    """The obstore writer's settings for the validated options; a ConfigError naming the option
    for what obstore cannot do (the boto3 client can)."""
    checksum = options["checksum_algorithm"]
    if checksum is not None and checksum not in OBSTORE_CHECKSUMS:
        raise ConfigError(f"{where}.checksum_algorithm",
                          f"{checksum} is not supported by the obstore client", value=checksum,
                          expected=f"one of {', '.join(OBSTORE_CHECKSUMS)}, or "
                                   f"{where}.client: boto3")
    return {
        "sse": params.get("ServerSideEncryption"),
        "kms_key_id": params.get("SSEKMSKeyId"),
        "bucket_key_enabled": params.get("BucketKeyEnabled"),
        "checksum": checksum,
        "expected_bucket_owner": params.get("ExpectedBucketOwner"),
        "tags": tuple(_text_entries(options["tags"], f"{where}.tags", "tag"))
        if options["tags"] else None,
        "metadata": tuple(sorted(params.get("Metadata", {}).items())) or None,
    }


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


def build(options: Mapping[str, Any], context: BuildContext) -> S3Sink | BatchedS3Sink:
    check_bucket(options["bucket"], f"{context.where}.bucket")
    check_prefix(options["prefix"], f"{context.where}.prefix")
    put_options = put_parameters(options, context.where)
    if options["client"] == "obstore":
        writer: Any = context.aws.object_store(
            options["bucket"], obstore_settings(options, put_options, context.where))
    else:
        check_checksum(options["checksum_algorithm"], f"{context.where}.checksum_algorithm")
        writer = Boto3Writer(context.aws.client("s3"), options["bucket"], put_options)
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
