"""Validation of the ``s3`` sink's options, before anything connects.

Bucket and prefix checks, and the security options (bucket owner, encryption, tags, metadata,
checksum) turned into the parameters each client sends: :func:`put_parameters` for boto3's
``put_object``, :func:`obstore_settings` for the obstore writer, which also refuses what obstore
cannot do, naming ``client: boto3``. Every bad value is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import botocore.session
from botocore.compat import HAS_CRT

from sqs_processor import CONTROL_CHARACTERS, ConfigError

CHECKSUM_CHOICES = ("CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME")
# Checksums botocore computes only with the AWS CRT installed (botocore[crt]).
CRT_CHECKSUMS = ("CRC32C", "CRC64NVME")
OBSTORE_CHECKSUMS = ("SHA256", "CRC64NVME")  # what obstore computes; boto3 has all five
SSE_CHOICES = ("AES256", "aws:kms", "aws:kms:dsse")

# \Z, not $: "$" also matches before a trailing line break.
_BUCKET = re.compile(r"\A[a-zA-Z0-9][a-zA-Z0-9._-]{1,253}[a-zA-Z0-9]\Z")
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
