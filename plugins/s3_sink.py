"""The ``s3`` sink: one JSON object per message at ``<prefix>YYYY/MM/DD/HH/<message-id>.json``.

The hour is the UTC hour of the message's ``SentTimestamp`` by default, not this consumer's
clock, so a redelivered message maps to the same key however late it comes back. The put is
conditional (``If-None-Match: *``): when the object already exists S3 answers 412, which means an
earlier delivery was stored, and counts as success. The key is built only from the configured
prefix, the timestamp and the SQS-assigned message id, never from the body or attributes.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
from botocore.exceptions import ClientError

from sqs_processor import (
    BuildContext,
    ConfigError,
    HealthCheckSpec,
    MessageError,
    Option,
    Record,
    Sink,
    SinkSpec,
    WriteResult,
    hookimpl,
)
from sqs_processor.batching import BatchPolicy
from sqs_processor.checks import LastCallCheck
from sqs_processor.errors import CONTROL_CHARACTERS, error_code
from sqs_processor.options import REQUIRED

OPTIONS = (
    Option("bucket", str, REQUIRED, "Name of the S3 bucket to write to."),
    Option("prefix", str, "sqs-messages/",
           "Key prefix before the date folders; empty, or ending in '/'."),
    Option("partition_time", str, "sent",
           "Which time picks the hour folder: 'sent' (SQS SentTimestamp) or 'received'.",
           choices=("sent", "received")),
    Option("content_type", str, "application/json", "Content-Type of every object."),
    Option("conditional_write", bool, True,
           "Put with If-None-Match: * so a redelivery never overwrites (turn off only for "
           "S3-compatible stores that reject the header)."),
    Option("batch", dict, None,
           "Batched mode: many messages per NDJSON object. Keys: max_records (500), max_bytes "
           "(8 MiB), max_age_seconds (10), compression (none or gzip). Unset: one object per "
           "message."),
)

BATCH_KEYS = {"max_records": (int, 500, 1, 100_000), "max_bytes": (int, 8 * 1024 * 1024, 1024,
                                                                     1024 ** 3),
              "max_age_seconds": (float, 10.0, 0.05, 3600.0)}

_BUCKET = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,253}[a-zA-Z0-9]$")
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_:.-]{1,128}$")
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


class S3Sink(Sink):
    """Writes each record as its own object; thread-safe."""

    def __init__(self, client: Any, options: Mapping[str, Any]) -> None:
        self.client = client
        self.bucket: str = options["bucket"]
        self.prefix: str = options["prefix"]
        self.use_sent_time = options["partition_time"] == "sent"
        self.content_type: str = options["content_type"]
        self._condition = {"IfNoneMatch": "*"} if options["conditional_write"] else {}
        self.check = LastCallCheck(f"write to bucket {self.bucket}")
        self.batch: BatchPolicy | None = options.get("batch_policy")
        self.gzip: bool = bool(options.get("batch_gzip"))

    def key_for(self, record: Record) -> str:
        message = record.message
        message_id = message.message_id
        if not _MESSAGE_ID.match(message_id) or message_id in (".", ".."):
            raise MessageError(f"message id {message_id!r} cannot be used in an S3 key")
        when: datetime = (message.sent_at if self.use_sent_time else None) or message.received_at
        return f"{self.prefix}{when:%Y/%m/%d/%H}/{message_id}.json"

    def write(self, record: Record) -> WriteResult:
        key = self.key_for(record)
        try:
            body = orjson.dumps(record.document)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise MessageError(f"document cannot be encoded as JSON: {exc}") from None
        return self._put(key, body, self.content_type)

    # -- batched mode (see sqs_processor.batching) ---------------------------------------------

    def batch_key(self, record: Record) -> str:
        """The hour folder a record's batch goes to (same time rule as single objects)."""
        return self.key_for(record).rpartition("/")[0] + "/"

    def encode(self, record: Record) -> bytes:
        """One NDJSON line: the same document a single object would hold."""
        try:
            return orjson.dumps(record.document) + b"\n"
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise MessageError(f"document cannot be encoded as JSON: {exc}") from None

    def write_batch(self, folder: str, lines: list[bytes], messages: list[Any]) -> WriteResult:
        """One object for the batch, named after its first message id and its size, so writing
        the same batch again meets the conditional put instead of making a copy."""
        body = b"".join(lines)
        name = f"{folder}{messages[0].message_id}-{len(lines)}.ndjson"
        if self.gzip:
            body = gzip.compress(body, compresslevel=6, mtime=0)
            name += ".gz"
        return self._put(name, body, "application/x-ndjson",
                         {"ContentEncoding": "gzip"} if self.gzip else {})

    def _put(self, key: str, body: bytes, content_type: str,
             extra: Mapping[str, Any] | None = None) -> WriteResult:
        location = f"s3://{self.bucket}/{key}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                   ContentType=content_type, **self._condition, **(extra or {}))
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412 or error_code(exc) == "PreconditionFailed":
                self.check.succeeded()
                return WriteResult(location=location, created=False)
            if error_code(exc) != "ConditionalRequestConflict":  # a concurrent write, not an outage
                self.check.failed(exc)
            raise
        except Exception as exc:
            self.check.failed(exc)
            raise
        self.check.succeeded()
        return WriteResult(location=location, created=True)


def batch_policy(raw: Mapping[str, Any] | None, where: str) -> tuple[BatchPolicy | None, bool]:
    """The batched-mode settings from the ``batch`` option, checked; (None, False) when off."""
    if raw is None:
        return None, False
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "compression":
            if value not in ("none", "gzip"):
                raise ConfigError(f"{where}.compression", "is not a supported compression",
                                  value=value, expected="none or gzip")
            continue
        if name not in BATCH_KEYS:
            known = ", ".join([*BATCH_KEYS, "compression"])
            raise ConfigError(f"{where}.{name}", "is not a batch setting", value=value,
                              expected=f"one of {known}")
        kind, _default, low, high = BATCH_KEYS[name]
        option = Option(name, kind, None, minimum=low, maximum=high)
        values[name] = option.convert(value, f"{where}.{name}")
    policy = BatchPolicy(
        max_records=values.get("max_records") or BATCH_KEYS["max_records"][1],
        max_bytes=values.get("max_bytes") or BATCH_KEYS["max_bytes"][1],
        max_age=values.get("max_age_seconds") or BATCH_KEYS["max_age_seconds"][1],
    )
    return policy, raw.get("compression") == "gzip"


def build(options: Mapping[str, Any], context: BuildContext) -> S3Sink:
    check_bucket(options["bucket"], f"{context.where}.bucket")
    check_prefix(options["prefix"], f"{context.where}.prefix")
    policy, use_gzip = batch_policy(options["batch"], f"{context.where}.batch")
    return S3Sink(context.aws.client("s3"),
                  {**options, "batch_policy": policy, "batch_gzip": use_gzip})


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
    if isinstance(pipeline.sink, S3Sink):
        return HealthCheckSpec(name="s3_write", check=pipeline.sink.check,
                               description="The last write to the bucket did not fail.")
    return None
