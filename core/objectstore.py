"""S3 ``PutObject`` through obstore (the Rust ``object_store`` crate), with boto3's credentials.

obstore makes the same conditional ``PutObject`` call as boto3 for about a third of its CPU
(DESIGN, decision 11). Everything around the call stays boto3's, so nothing changes for an
operator:

* **credentials** come from the pipeline's boto3 session (IRSA, profiles, the ``AWS_*``
  variables), bridged with obstore's ``Boto3CredentialProvider``; refreshable credentials are
  asked for again every five minutes, well inside botocore's own refresh margin;
* **the endpoint** is the one botocore resolves (``aws.endpoint_url``, ``AWS_ENDPOINT_URL_S3``,
  ``AWS_ENDPOINT_URL``, the profile's ``endpoint_url``); a custom one is addressed path-style,
  AWS's own virtual-hosted (path-style for bucket names with dots, as boto3 does);
* **retries and timeouts** follow ``aws.max_attempts``, ``aws.connect_timeout`` and
  ``aws.read_timeout``;
* **failures** are raised as botocore's exceptions (``ClientError`` with the S3 error code and
  HTTP status, ``EndpointConnectionError``, ``ReadTimeoutError``), so they are classified, counted
  and logged exactly as boto3's are (:func:`sqs_processor.errors.is_system_failure`);
* **telemetry**: each call records ``sqs_processor_aws_call_duration_seconds`` and, when AWS
  client spans are on, an ``S3.PutObject`` CLIENT span with the attributes the botocore
  instrumentation sets.

:class:`ObjectStoreWriter` is created offline (``validate`` builds pipelines) and connects in
:meth:`~ObjectStoreWriter.connect`, which resolves the credentials.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from sqs_processor.errors import MessageError

CHECKSUMS = ("SHA256", "CRC64NVME")
"""The ``checksum_algorithm`` values obstore computes (boto3 also has CRC32, CRC32C and SHA1)."""

CREDENTIAL_TTL = timedelta(minutes=5)
NO_CREDENTIALS = str(NoCredentialsError())  # botocore's own words, seen through obstore

_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]{1,200})</Code>")
_MESSAGE = re.compile(r"<Message>([^<]{0,1000})</Message>")
_REQUEST_ID = re.compile(r"<RequestId>([^<]{1,200})</RequestId>")
_RETRIES = re.compile(r"after (\d+) retries")
_HTTP_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")  # how the request broke, no answer


_LABELS = {outcome: {"service": "s3", "operation": "PutObject", "outcome": outcome}
           for outcome in ("ok", "error")}  # built once, not per call


def _first(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1) if match else None


def translate_error(exc: BaseException, endpoint: str) -> Exception:
    """The botocore exception boto3 would have raised for the failure obstore reports.

    An HTTP answer becomes a ``ClientError`` with S3's error code (the HTTP status when the
    answer has no XML body, as botocore does) and status; no answer at all becomes a timeout or
    connection error; a key obstore cannot use is the message's own failure. Anything else has
    no HTTP status and is reported as a connection error: the system's, never the message's, so
    an unknown failure pauses polling rather than sending good messages to the DLQ.
    """
    from obstore.exceptions import InvalidPathError

    text = str(exc)
    status = _first(_STATUS, text)
    if status is not None:
        code = _first(_CODE, text) or status
        response = {"Error": {"Code": code, "Message": _first(_MESSAGE, text) or ""},
                    "ResponseMetadata": {"HTTPStatusCode": int(status),
                                         "RequestId": _first(_REQUEST_ID, text) or ""}}
        retries = _first(_RETRIES, text)
        if retries is not None:
            response["ResponseMetadata"]["RetryAttempts"] = int(retries)
        return ClientError(response, "PutObject")
    if NO_CREDENTIALS in text:
        return NoCredentialsError()
    if isinstance(exc, InvalidPathError):
        return MessageError(f"obstore cannot write this key: {text.splitlines()[0]}")
    summary = text.splitlines()[0] if text else type(exc).__name__
    kind = _first(_HTTP_KIND, text)
    if kind == "Timeout":
        return ReadTimeoutError(endpoint_url=endpoint, error=summary)
    if kind == "Interrupted":  # the connection broke after the request was sent
        return ConnectionClosedError(endpoint_url=endpoint, error=summary)
    return EndpointConnectionError(endpoint_url=endpoint, error=summary)


class SessionCredentials:
    """obstore's credential provider for a boto3 session, resolved at the first call, as boto3
    resolves its own: missing credentials fail the call (a system failure), not the start."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._provider: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._provider is None:
                from obstore.auth.boto3 import Boto3CredentialProvider

                if self._session.get_credentials() is None:
                    raise NoCredentialsError()
                self._provider = Boto3CredentialProvider(self._session, ttl=CREDENTIAL_TTL)
            provider = self._provider
        return provider()


def store_settings(bucket: str, endpoint: str, default_endpoint: str,
                   region: str) -> dict[str, Any]:
    """Where obstore sends the request: botocore's endpoint, addressed as boto3 addresses it."""
    settings: dict[str, Any] = {"region": region}
    if endpoint.rstrip("/") != default_endpoint.rstrip("/"):  # an emulator or a VPC endpoint
        settings["endpoint"] = endpoint
        settings["virtual_hosted_style_request"] = False
    else:  # AWS itself: virtual-hosted, except for names with dots (their TLS would not match)
        settings["virtual_hosted_style_request"] = "." not in bucket
    return settings


class ObjectStoreWriter:
    """Conditional puts into one bucket through obstore; thread-safe once connected.

    ``settings`` are the object settings that are the same on every put: ``sse``,
    ``kms_key_id``, ``bucket_key_enabled``, ``checksum`` (obstore's names are set here),
    ``expected_bucket_owner``, ``tags`` (a mapping) and ``metadata`` (a mapping).
    """

    def __init__(self, bucket: str, settings: Mapping[str, Any], *, session: Any,
                 region: str, endpoint_url: str | None, connect_timeout: float,
                 read_timeout: float, max_attempts: int) -> None:
        self.bucket = bucket
        self.settings = dict(settings)
        self.region = region
        self._session = session
        self._endpoint_url = endpoint_url
        self._timeouts = (connect_timeout, read_timeout)
        self._max_attempts = max_attempts
        self._store: Any = None
        self._lock = threading.Lock()
        self.endpoint = ""
        self._tags: dict[str, str] | None = dict(settings.get("tags") or {}) or None
        self._metadata = dict(settings.get("metadata") or {})
        self._span_attributes: dict[str, Any] = {}
        self._tracer: Tracer | None = None
        self._duration: Any = None
        self._followers: list[tuple[Callable[[str], None], Callable[[], None]]] = []

    # -- set-up --------------------------------------------------------------------------------

    def connect(self) -> None:
        """Resolve credentials and the endpoint, and create the store (may call the network)."""
        with self._lock:
            if self._store is not None:
                return
            from obstore.store import S3Store

            endpoint, default = self._endpoints()
            connect_timeout, read_timeout = self._timeouts
            config: dict[str, Any] = store_settings(self.bucket, endpoint, default, self.region)
            for ours, theirs in (("sse", "server_side_encryption"),
                                 ("kms_key_id", "sse_kms_key_id"),
                                 ("bucket_key_enabled", "sse_bucket_key_enabled"),
                                 ("checksum", "checksum_algorithm")):
                if self.settings.get(ours) is not None:
                    config[theirs] = self.settings[ours]
            client: dict[str, Any] = {
                "allow_http": endpoint.startswith("http://"),
                "connect_timeout": timedelta(seconds=connect_timeout),
                "timeout": timedelta(seconds=read_timeout),
                "user_agent": "sqs-processor (obstore)",
            }
            # obstore signs default headers with the request (S3 refuses unsigned x-amz-*).
            headers: dict[str, str] = {}
            owner = self.settings.get("expected_bucket_owner")
            if owner:
                headers["x-amz-expected-bucket-owner"] = owner
            if self.settings.get("checksum"):
                # What the AWS SDKs send beside the checksum itself; S3-compatible stores
                # (moto among them) keep the checksum only when it is there.
                headers["x-amz-sdk-checksum-algorithm"] = self.settings["checksum"]
            if headers:
                client["default_headers"] = headers
            retry = {"max_retries": max(0, self._max_attempts - 1),
                     "retry_timeout": timedelta(
                         seconds=(connect_timeout + read_timeout) * self._max_attempts)}
            provider = SessionCredentials(self._session)
            self._store = S3Store(self.bucket, config=config, client_options=client,
                                  retry_config=retry, credential_provider=provider)
            self.endpoint = endpoint
            parsed = urlparse(endpoint)
            self._span_attributes = {
                "rpc.system": "aws-api", "rpc.service": "S3", "rpc.method": "PutObject",
                "cloud.region": self.region, "aws.region": self.region,
                "aws.s3.bucket": self.bucket,
                "server.address": parsed.hostname or "",
                "server.port": parsed.port or (443 if parsed.scheme == "https" else 80)}

    def _endpoints(self) -> tuple[str, str]:
        """(the endpoint botocore would use, the one it uses with no endpoint configured)."""
        from botocore.config import Config

        kwargs: dict[str, Any] = {"region_name": self.region}
        if self._endpoint_url:
            kwargs["endpoint_url"] = self._endpoint_url
        configured = self._session.client("s3", **kwargs)
        plain = self._session.client("s3", region_name=self.region,
                                     config=Config(ignore_configured_endpoint_urls=True))
        try:
            return configured.meta.endpoint_url, plain.meta.endpoint_url
        finally:
            configured.close()
            plain.close()

    @property
    def connected(self) -> bool:
        return self._store is not None

    def observe(self, duration: Any, tracer: Tracer | None) -> None:
        """Record every call's duration in ``duration`` (a histogram) and, with ``tracer``, a
        CLIENT span per call."""
        self._duration = duration
        self._tracer = tracer

    def follow_calls(self, begin: Callable[[str], None], end: Callable[[], None]) -> None:
        """Call ``begin("S3.PutObject")`` before and ``end()`` after every call (retries
        included), as botocore's ``before-call``/``after-call`` events do for boto3's clients
        (:mod:`sqs_processor.stalls` follows calls in progress this way)."""
        self._followers.append((begin, end))

    def close(self) -> None:
        with self._lock:
            self._store = None

    # -- the call ------------------------------------------------------------------------------

    def put(self, key: str, body: bytes, content_type: str, *, create: bool,
            content_encoding: str | None = None) -> bool:
        """Put ``body`` at ``key``; True if created, False if ``create`` found it already there.
        Failures are raised as botocore's exceptions (see :func:`translate_error`)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        store = self._store
        if store is None:
            self.connect()
            store = self._store
        attributes = {"Content-Type": content_type, **self._metadata}
        if content_encoding:
            attributes["Content-Encoding"] = content_encoding
        span_context = (self._tracer.start_as_current_span(
            "S3.PutObject", kind=SpanKind.CLIENT, attributes=self._span_attributes,
            record_exception=False, set_status_on_exception=False)
            if self._tracer is not None else nullcontext())
        started = time.perf_counter()
        outcome = "ok"
        for begin, _ in self._followers:
            begin("S3.PutObject")
        with span_context as span:
            try:
                obstore.put(store, key, body, attributes=attributes, tags=self._tags,
                            mode="create" if create else "overwrite", use_multipart=False)
                status, created = 200, True
            except AlreadyExistsError:
                status, created = 412, False
            except Exception as exc:
                error = translate_error(exc, self.endpoint)
                status = (error.response["ResponseMetadata"]["HTTPStatusCode"]
                          if isinstance(error, ClientError) else None)
                if status is None:
                    outcome = "error"  # botocore's after-call-error: no HTTP answer
                self._end(span, status, error)
                raise error from None
            finally:
                for _, end in self._followers:
                    end()
                if self._duration is not None:
                    self._duration.record(time.perf_counter() - started, _LABELS[outcome])
            self._end(span, status, None)
        return created

    @staticmethod
    def _end(span: Any, status: int | None, error: Exception | None) -> None:
        if span is None or not span.is_recording():
            return
        if status is not None:
            span.set_attribute("http.status_code", status)
        if isinstance(error, ClientError):
            metadata = error.response["ResponseMetadata"]
            if metadata.get("RequestId"):
                span.set_attribute("aws.request_id", metadata["RequestId"])
            if "RetryAttempts" in metadata:
                span.set_attribute("retry_attempts", metadata["RetryAttempts"])
        if (status is not None and status >= 400) or (error is not None and status is None):
            span.set_status(Status(StatusCode.ERROR, str(error or f"HTTP {status}")))
